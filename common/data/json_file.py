"""Reading COCO-style annotation files (iNat21's train / val json) with errors that name the file and the fault."""
import json
import os

from common.data.datasets import DataError


def read_json_object(path, list_keys, error=DataError, what="annotation file"):
    """The JSON object in `path`, checked to hold a list under each of `list_keys`; `error` (a DataError class)
    names the file and what is wrong: missing, not UTF-8, not valid JSON (line and column), not an object, a list
    missing."""
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 text file ({e})") from None
    quoted = [f"'{k}'" for k in list_keys]
    keys = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object with {keys}, got {type(data).__name__}")
    for key in list_keys:
        if not isinstance(data.get(key), list):
            raise error(f"{path}: '{key}' is missing or not a list (a COCO-style file has {keys})")
    return data
