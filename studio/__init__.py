"""LLMOps Studio: from a domain expert's spreadsheet to a fine-tuned model behind a TGI endpoint."""

__version__ = "0.1.0"
