"""`studio eval`: score a run against its base model on a golden set or its held-out split; compare
runs on the same golden set; vote blind between the two answers."""

from __future__ import annotations

from pathlib import Path

from studio.cli import Output
from studio.core.argtypes import whole
from studio.evaluation.scores import CLOSE_F1


def register(verbs, common) -> None:
    p = verbs.add_parser("eval", parents=[common], help="evaluate a tuned model against its base model")
    sub = p.add_subparsers(dest="eval_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", parents=[common], help="evaluate a finished run",
                         description="Both models answer every question (greedy); the answers are scored "
                                     "against the references (exact match, token F1, ROUGE-L) and held-out "
                                     "loss/perplexity is measured on the run's validation split.")
    run.add_argument("run_id")
    run.add_argument("--golden", default=None, metavar="FILE",
                     help="CSV with question and reference_answer columns (default: the run's held-out split)")
    run.add_argument("--max-new-tokens", type=int, default=128)
    run.add_argument("--heldout-rows", type=whole(1), default=50, help="validation rows used at most (default 50)")
    run.set_defaults(handler=run_eval)

    ls = sub.add_parser("list", parents=[common], help="list evaluations")
    ls.add_argument("--run", default=None)
    ls.set_defaults(handler=run_list)

    show = sub.add_parser("show", parents=[common], help="an evaluation's scores and answers")
    show.add_argument("eval_id")
    show.set_defaults(handler=run_show)

    cmp = sub.add_parser("compare", parents=[common], help="all runs evaluated on the same golden set",
                         description="SOURCE is an evaluation id or a golden-set CSV.")
    cmp.add_argument("source")
    cmp.set_defaults(handler=run_compare)

    vs = sub.add_parser("versus", parents=[common], help="did it help? a continued run against the run it started from",
                        description="Both runs answer every golden question (greedy, one endpoint serving both "
                                    "adapters); their scores are shown side by side. Vote blind between their answers "
                                    "with `studio eval ab EVAL_ID`; `studio eval versus --show EVAL_ID` gives the win "
                                    "rate.")
    vs.add_argument("run_id", nargs="?", default=None, metavar="RUN", help="the new run (e.g. the DPO run)")
    vs.add_argument("--against", default=None, metavar="RUN",
                    help="the run to compare with (default: the run RUN was continued from, --from)")
    vs.add_argument("--golden", default=None, metavar="FILE", help="CSV with question and reference_answer columns")
    vs.add_argument("--max-new-tokens", type=int, default=128)
    vs.add_argument("--show", default=None, metavar="EVAL_ID", help="show an earlier comparison and its win rate")
    vs.set_defaults(handler=run_versus)

    ab = sub.add_parser("ab", parents=[common], help="blind A/B vote between base and tuned answers")
    ab.add_argument("eval_id")
    ab.add_argument("--vote", nargs=2, metavar=("PAIR", "CHOICE"), default=None,
                    help="record one vote (pair number from 1, and a, b or tie) instead of asking interactively")
    ab.set_defaults(handler=run_ab)


def _scores(summary: dict) -> str:
    lines = ["model   exact  token-F1  ROUGE-L  loss    perplexity"]
    for which in ("base", "tuned"):
        s = summary.get(which, {})
        lines.append(f"{which:<7} {s.get('exact_match', 0):<6.2f} {s.get('token_f1', 0):<9.3f} "
                     f"{s.get('rouge_l', 0):<8.3f} {s.get('loss', '-')!s:<7} {s.get('perplexity', '-')}")
    better = summary.get("better_f1", {})
    lines.append(f"tuned better on {better.get('tuned', 0)}, base better on {better.get('base', 0)}, "
                 f"tie on {better.get('tie', 0)}, neither close (F1 < {CLOSE_F1}) on {better.get('neither', 0)} "
                 f"of {summary.get('questions')} questions (token F1)")
    from studio.evaluation.golden import seen_sentence

    if seen_sentence(summary):
        lines.append(seen_sentence(summary))
    if summary.get("ab"):
        ab = summary["ab"]
        lines.append(f"blind votes: tuned {ab['tuned']}, base {ab['base']}, tie {ab['tie']} "
                     f"({ab['voted']} of {ab['total']})")
    return "\n".join(lines)


def run_eval(args, ws) -> Output:
    from studio.evaluation.golden import read_golden
    from studio.evaluation.runner import evaluate_run

    golden = read_golden(args.golden) if args.golden else None
    ev = evaluate_run(ws, args.run_id, golden, golden_name=Path(args.golden).name if args.golden else "",
                      max_new_tokens=args.max_new_tokens, heldout_rows=args.heldout_rows)
    return Output(ev.model_dump(), f"{ev.id} on {ev.golden_set} (golden set {ev.golden_hash})\n"
                                   + _scores(ev.summary))


def run_list(args, ws) -> Output:
    from studio.evaluation.runner import list_evaluations

    found = list_evaluations(ws, run_id=args.run)
    text = "\n".join(f"{e.id}  {e.run_id}  {e.kind:<7} {e.golden_set} ({e.golden_hash})  "
                     f"tuned F1 {e.summary.get('tuned', {}).get('token_f1')}  "
                     f"base F1 {e.summary.get('base', {}).get('token_f1')}"
                     for e in found) or "No evaluations yet: studio eval run RUN_ID"
    return Output([e.model_dump() for e in found], text)


def run_show(args, ws) -> Output:
    from studio.evaluation.runner import get_evaluation
    from studio.evaluation.versus import KIND, versus_text

    ev = get_evaluation(ws, args.eval_id)
    items = ev.results()
    versus = ev.kind == KIND  # run against run: "base" is the older run, "tuned" the new one
    lines = [versus_text(ev) if versus else f"{ev.id}: run {ev.run_id} on {ev.golden_set}\n" + _scores(ev.summary), ""]
    labels = {"base": "old", "tuned": "new"} if versus else {"base": "base", "tuned": "tuned"}
    for n, item in enumerate(items, 1):
        lines += [f"{n}. {item['question']}", f"   reference: {item['reference']}"]
        for which in ("base", "tuned"):
            lines.append(f"   {labels[which]:<5} (F1 {item[which]['token_f1']:.2f}): {item[which]['answer']}")
    return Output({**ev.model_dump(), "items": items}, "\n".join(lines))


def run_compare(args, ws) -> Output:
    from studio.evaluation.golden import golden_hash, read_golden
    from studio.evaluation.runner import compare, get_evaluation

    source = args.source
    digest = golden_hash(read_golden(source)) if Path(source).is_file() else get_evaluation(ws, source).golden_hash
    rows = compare(ws, digest)
    text = "\n".join(f"{r['evaluation']}  {r['run']}  tuned F1 {r['tuned token_f1']}  ROUGE-L {r['tuned rouge_l']}  "
                     f"loss {r['tuned loss']}  (base F1 {r['base token_f1']})" for r in rows)
    return Output(rows, text or f"No evaluations on golden set {digest} yet.")


def run_versus(args, ws) -> Output:
    from studio.core.errors import InvalidInput
    from studio.evaluation.golden import read_golden
    from studio.evaluation.versus import evaluate_versus, get_versus, versus_text, win_rate

    if args.show:
        ev = get_versus(ws, args.show)
    else:
        if not args.run_id or not args.golden:
            raise InvalidInput("Give the new run and a golden set.",
                               "studio eval versus RUN --golden FILE [--against RUN], or --show EVAL_ID.")
        ev = evaluate_versus(ws, args.run_id, read_golden(args.golden), against=args.against,
                             golden_name=Path(args.golden).name, max_new_tokens=args.max_new_tokens)
    return Output({**ev.model_dump(), "win_rate": win_rate(ev.summary)}, versus_text(ev))


def _tally_text(ws, eval_id: str, tally: dict) -> str:
    from studio.evaluation.runner import get_evaluation
    from studio.evaluation.versus import KIND, win_rate

    ev = get_evaluation(ws, eval_id)
    if ev.kind == KIND:
        return f"votes: {win_rate({**ev.summary, 'ab': tally})['text']}"
    return f"votes: tuned {tally['tuned']}, base {tally['base']}, tie {tally['tie']} " \
           f"({tally['voted']} of {tally['total']} pairs)"


def run_ab(args, ws) -> Output:
    from studio.core.errors import InvalidInput
    from studio.evaluation.ab import ab_pairs, ab_tally, ab_vote

    if args.vote:
        try:
            pair = int(args.vote[0]) - 1
        except ValueError as exc:
            raise InvalidInput(f"'{args.vote[0]}' is not a pair number.", "Give the pair's number, from 1.") from exc
        tally = ab_vote(ws, args.eval_id, pair, args.vote[1].lower())
        return Output(tally, _tally_text(ws, args.eval_id, tally))
    pairs = ab_pairs(ws, args.eval_id)
    for n, pair in enumerate(pairs):
        if pair["vote"] is not None:
            continue
        print(f"\n[{n + 1}/{len(pairs)}] {pair['question']}\n  A: {pair['a']}\n  B: {pair['b']}")
        choice = ""
        while choice not in ("a", "b", "tie", "q"):
            try:
                choice = input("better answer? [a/b/tie, q to stop] ").strip().lower()
            except EOFError:  # no one at the keyboard (a script): stop asking, keep the votes given
                choice = "q"
        if choice == "q":
            break
        ab_vote(ws, args.eval_id, n, choice)
    tally = ab_tally(ab_pairs(ws, args.eval_id))
    return Output(tally, _tally_text(ws, args.eval_id, tally))
