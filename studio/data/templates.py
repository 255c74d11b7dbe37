"""Chat templates: how a conversation becomes the one string the model reads.

A dataset version records the template it was rendered with: "model" (the base model's own chat
template) or the name of a fallback below. Training calls `apply_template(tokenizer, version.template)`
so that it trains on exactly what the Data tab's preview showed.
"""

from __future__ import annotations

from studio.core.errors import InvalidInput

# ChatML as Qwen writes it; {% generation %} marks the answers for TRL's assistant_only_loss.
CHATML = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Alpaca (Stanford, 2023), turned into a chat: works with any tokenizer, because the answer ends with
# the tokenizer's own end-of-sequence token instead of markers the vocabulary may not have.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA = (
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}"
    "{%- set turns = messages[1:] %}"
    "{%- else %}{{- '" + ALPACA_PREAMBLE + "\\n\\n' }}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'user' %}{{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '### Response:\\n' }}{% generation %}{{- message['content'] + (eos_token or '') }}{% endgeneration %}"
    "{{- '\\n\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '### Response:\\n' }}{%- endif %}"
)

FALLBACK_TEMPLATES: dict[str, str] = {"chatml": CHATML, "alpaca": ALPACA}
TEMPLATE_CHOICES = ("model", *FALLBACK_TEMPLATES)
TEMPLATE_HELP = {
    "model": "the base model's own chat template (what it was instruction-tuned with)",
    "chatml": "ChatML (<|im_start|>role ... <|im_end|>), used by Qwen, SmolLM and many others",
    "alpaca": "Alpaca (### Instruction / ### Response), for base models without a chat template",
}


def has_own_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def default_template(tokenizer) -> str:
    """The model's own template when it has one; else ChatML if its vocabulary knows the markers, else Alpaca."""
    if has_own_template(tokenizer):
        return "model"
    vocab = tokenizer.get_vocab()
    return "chatml" if "<|im_start|>" in vocab and "<|im_end|>" in vocab else "alpaca"


def apply_template(tokenizer, template: str):
    """Set the chat template a dataset version was rendered with on `tokenizer` (in place) and return it.

    "model" keeps the tokenizer's own template (refused when it has none); a fallback name sets that Jinja.
    """
    template = (template or "").strip()
    if template == "model":
        if not has_own_template(tokenizer):
            raise InvalidInput(
                "This base model has no chat template of its own.",
                f"Choose a fallback template: {', '.join(FALLBACK_TEMPLATES)}.",
            )
        return tokenizer
    if template not in FALLBACK_TEMPLATES:
        raise InvalidInput(f"'{template}' is not a chat template this studio knows.",
                           f"Use one of: {', '.join(TEMPLATE_CHOICES)}.")
    tokenizer.chat_template = FALLBACK_TEMPLATES[template]
    return tokenizer
