"""The Gradio front end: one module per tab, each a thin layer of widgets over core calls."""
