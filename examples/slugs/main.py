"""A function with a dependency: python-slugify comes from requirements.txt, installed at deploy
time into this version's own package directory."""

from slugify import slugify


def handler(event, context):
    text = (event or {}).get("text", "Hello, faasbox!")
    return {"text": text, "slug": slugify(text)}
