"""`studio chat`: ask a run (or any endpoint) a question, see the exact request, correct an answer."""

from __future__ import annotations

import sys

from studio.cli import Output


def register(verbs, common) -> None:
    p = verbs.add_parser("chat", parents=[common], help="chat with a tuned model (or the base model)")
    sub = p.add_subparsers(dest="chat_command", required=True, metavar="ACTION")

    ask = sub.add_parser("ask", parents=[common], help="ask one question and stream the answer",
                         description="TARGET is a run id (its endpoint is started when none runs, and left "
                                     "running), an endpoint id or name, or a server URL.")
    ask.add_argument("target")
    ask.add_argument("message")
    which = ask.add_mutually_exclusive_group()
    which.add_argument("--base", action="store_true", help="ask the base model instead of the tuned one")
    which.add_argument("--model", default=None, help="the model name on the endpoint (an adapter, or the base)")
    ask.add_argument("--system", default="", help="a system prompt")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = repeatable, most likely words (default)")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--show-request", choices=["curl", "python"], default=None,
                     help="print the exact request instead of sending it")
    ask.set_defaults(handler=run_ask)

    fix = sub.add_parser("correct", parents=[common], help="save a corrected answer as a new training row",
                         description="The question and the answer you wanted become a row of a new dataset "
                                     "version (the run's data plus every correction so far).")
    fix.add_argument("--run", default=None, help="the run whose answer you correct (its data is the starting point)")
    fix.add_argument("--question", required=True)
    fix.add_argument("--corrected", required=True, help="the answer the model should have given")
    fix.add_argument("--rejected", default="", help="the answer the model gave (kept in the feedback log)")
    fix.add_argument("--system", default="", help="the system prompt the question was asked with")
    fix.set_defaults(handler=run_correct)


def _body(args, ws):
    from studio.serving.chat import Settings, build_messages, chat_body, open_target

    settings = Settings(system_prompt=args.system, temperature=args.temperature, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed).check()
    messages = build_messages([], args.message, settings.system_prompt)  # an empty question starts nothing
    target = open_target(ws, args.target)
    model = args.model or (target.base if args.base or not target.tuned else target.tuned)
    return target, chat_body(model, messages, settings)


def run_ask(args, ws) -> Output | None:
    from studio.serving.chat import as_curl, as_python
    from studio.serving.client import complete_chat, stream_chat

    target, body = _body(args, ws)
    if target.started:
        print(f"(started endpoint {target.endpoint_id} at {target.url}; it keeps running for the next question: "
              f"`studio endpoints stop {target.endpoint_id}` stops it)", file=sys.stderr)
    if args.show_request:
        text = (as_curl if args.show_request == "curl" else as_python)(target.url, body)
        return Output({"url": target.url, "body": body}, text)
    if args.json:
        answer = complete_chat(target.url, {**body, "stream": False}, api_key=target.api_key)
        return Output({"model": body["model"], "url": target.url, "answer": answer}, answer)
    for piece in stream_chat(target.url, body, api_key=target.api_key):
        print(piece, end="", flush=True)
    print()
    return None


def run_correct(args, ws) -> Output:
    from studio.evaluation.feedback import add_correction
    from studio.serving.chat import build_messages

    messages = build_messages([], args.question, args.system)
    version = add_correction(ws, messages, args.corrected, rejected=args.rejected, run_id=args.run)
    return Output(version.model_dump(), f"saved as dataset version {version.id} '{version.name}' "
                                        f"({version.rows_train} training rows); train on it next")
