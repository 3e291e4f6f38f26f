"""The web demo (``detserve demo``): a Gradio page that calls a served detector through the client.

Needs the ``demo`` extra (``pip install 'detserve-client[demo]'``); nothing here is imported by the base client.
"""
