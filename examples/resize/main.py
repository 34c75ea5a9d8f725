"""Stands in for an image resizer in the task examples (docs/cli-tasks.md): it answers with
the thumbnail's name, and an event whose image is not a file name fails, as a real resizer
would (the example needs no imaging library)."""

import os.path


def handler(event, context):
    image = (event or {}).get("image") if isinstance(event, dict) else None
    if not isinstance(image, str):
        raise TypeError("expected str")
    stem, ext = os.path.splitext(image)
    return {"thumbnail": f"{stem}-128{ext}"}
