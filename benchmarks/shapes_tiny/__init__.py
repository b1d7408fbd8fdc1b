"""The embedded shapes-world model's recipe: KLAL-supervised training (``train``)."""
