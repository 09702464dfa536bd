"""Message components (legacy action rows and Components V2) and modals, checked the way Discord checks them.

Sources (discord/discord-api-docs, HEAD c98d64bc, 2026-08-06): components/reference.mdx (every structure and limit
below), change-log.mdx 2025-04-29 "Raised Component Limits" (40 components in a V2 message, no top-level cap; legacy
messages keep 5 action rows), interactions/receiving-and-responding.mdx "Modal" (title <= 45, 1-5 components).
Every violation is Discord's 400 / 50035 Invalid Form Body with the failing field's path in the message.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.discord_wire import Json, invalid_form

ACTION_ROW, BUTTON, TEXT_INPUT, SECTION, TEXT_DISPLAY, THUMBNAIL = 1, 2, 4, 9, 10, 11
MEDIA_GALLERY, FILE, SEPARATOR, CONTAINER, LABEL, FILE_UPLOAD = 12, 13, 14, 17, 18, 19
SELECTS = (3, 5, 6, 7, 8)
LINK_STYLE, PREMIUM_STYLE = 5, 6
V2_ONLY = {SECTION, TEXT_DISPLAY, THUMBNAIL, MEDIA_GALLERY, FILE, SEPARATOR, CONTAINER}
V2_TOP_LEVEL = {ACTION_ROW, SECTION, TEXT_DISPLAY, MEDIA_GALLERY, FILE, SEPARATOR, CONTAINER}
CONTAINER_CHILDREN = {ACTION_ROW, SECTION, TEXT_DISPLAY, MEDIA_GALLERY, FILE, SEPARATOR}
MAX_V2_COMPONENTS = 40
MAX_LEGACY_ROWS = 5
MODAL_TOP_LEVEL = {ACTION_ROW, TEXT_DISPLAY, LABEL}
LABEL_CHILDREN = {TEXT_INPUT, *SELECTS, FILE_UPLOAD, 21, 22, 23}  # 21-23: radio group, checkbox group, checkbox
ATTACHMENT_SCHEME = "attachment://"


def _fail(path: str, problem: str) -> Exception:
    return invalid_form(f"Invalid Form Body: {path}: {problem}")


def _text(value: Any, path: str, *, low: int, high: int, required: bool = True) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise _fail(path, f"Must be between {low} and {high} in length.")


def _int_in(value: Any, path: str, low: int, high: int) -> None:
    if value is not None and (not isinstance(value, int) or not low <= value <= high):
        raise _fail(path, f"int value should be between {low} and {high}.")


def _items(value: Any, path: str, low: int, high: int) -> list[Json]:
    if not isinstance(value, list) or not low <= len(value) <= high:
        raise _fail(path, f"Must be between {low} and {high} in length.")
    return value


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


@dataclass
class _MessageCheck:
    available: set[str]  # filenames an attachment:// URL may name
    referenced: set[str] = field(default_factory=set)


def check_message_components(components: Any, *, v2: bool, available: set[str]) -> set[str]:
    """Validate a message's ``components``; returns the filenames its ``attachment://`` URLs name (V2 only)."""
    if not isinstance(components, list):
        raise _fail("components", "Must be an array.")
    if not v2:
        _check_legacy(components)
        return set()
    check = _MessageCheck(available)
    total = sum(_check(c, f"components[{i}]", V2_TOP_LEVEL, check) for i, c in enumerate(components))
    if total > MAX_V2_COMPONENTS:
        raise _fail("components", f"Must be {MAX_V2_COMPONENTS} or fewer in total (counting nested), got {total}.")
    return check.referenced


def _check_legacy(components: list[Any]) -> None:
    if len(components) > MAX_LEGACY_ROWS:
        raise _fail("components", f"Must be {MAX_LEGACY_ROWS} or fewer in length.")
    for index, component in enumerate(components):
        kind = component.get("type") if isinstance(component, dict) else None
        if kind in V2_ONLY:
            raise _fail(f"components[{index}].type", f"Component type {kind} requires the IS_COMPONENTS_V2 flag.")
        _check(component, f"components[{index}]", {ACTION_ROW}, _MessageCheck(set()))


def _check(component: Any, path: str, allowed: set[int], check: _MessageCheck) -> int:
    """Validate one component and its children; returns how many components it counts for."""
    kind = component.get("type") if isinstance(component, dict) else None
    if kind not in allowed:
        raise _fail(f"{path}.type", f"Component type {kind} is not allowed here.")
    checker = _CHECKERS.get(kind, _no_children)
    return 1 + checker(component, path, check)


def _no_children(component: Json, path: str, check: _MessageCheck) -> int:
    return 0


def _action_row(component: Json, path: str, check: _MessageCheck) -> int:
    children = _items(component.get("components"), f"{path}.components", 1, 5)
    kinds = {c.get("type") for c in children if isinstance(c, dict)}
    if kinds & set(SELECTS) and len(children) != 1:
        raise _fail(f"{path}.components", "An action row holds one select or up to 5 buttons.")
    allowed = {BUTTON, *SELECTS}
    return sum(_check(c, f"{path}.components[{i}]", allowed, check) for i, c in enumerate(children))


def _button(component: Json, path: str, check: _MessageCheck) -> int:
    style = component.get("style")
    _int_in(style, f"{path}.style", 1, 6)
    _text(component.get("label"), f"{path}.label", low=0, high=80, required=False)
    if style == LINK_STYLE:
        _text(component.get("url"), f"{path}.url", low=1, high=512)
    elif style != PREMIUM_STYLE:
        _text(component.get("custom_id"), f"{path}.custom_id", low=1, high=100)
    return 0


def _select(component: Json, path: str, check: _MessageCheck) -> int:
    _text(component.get("custom_id"), f"{path}.custom_id", low=1, high=100)
    if component.get("type") == 3:
        _items(component.get("options"), f"{path}.options", 1, 25)
    return 0


def _section(component: Json, path: str, check: _MessageCheck) -> int:
    children = _items(component.get("components"), f"{path}.components", 1, 3)
    count = sum(_check(c, f"{path}.components[{i}]", {TEXT_DISPLAY}, check) for i, c in enumerate(children))
    if "accessory" not in component:
        raise _fail(f"{path}.accessory", "This field is required.")
    return count + _check(component["accessory"], f"{path}.accessory", {BUTTON, THUMBNAIL}, check)


def _text_display(component: Json, path: str, check: _MessageCheck) -> int:
    _text(component.get("content"), f"{path}.content", low=1, high=4000)
    return 0


def _thumbnail(component: Json, path: str, check: _MessageCheck) -> int:
    _media(component.get("media"), f"{path}.media", check)
    _text(component.get("description"), f"{path}.description", low=0, high=1024, required=False)
    return 0


def _gallery(component: Json, path: str, check: _MessageCheck) -> int:
    for index, item in enumerate(_items(component.get("items"), f"{path}.items", 1, 10)):
        _media(item.get("media"), f"{path}.items[{index}].media", check)
        _text(item.get("description"), f"{path}.items[{index}].description", low=0, high=1024, required=False)
    return 0


def _file(component: Json, path: str, check: _MessageCheck) -> int:
    _media(component.get("file"), f"{path}.file", check, attachment_only=True)
    return 0


def _separator(component: Json, path: str, check: _MessageCheck) -> int:
    _int_in(component.get("spacing"), f"{path}.spacing", 1, 2)
    return 0


def _container(component: Json, path: str, check: _MessageCheck) -> int:
    children = _items(component.get("components"), f"{path}.components", 1, MAX_V2_COMPONENTS)
    _int_in(component.get("accent_color"), f"{path}.accent_color", 0, 0xFFFFFF)
    return sum(_check(c, f"{path}.components[{i}]", CONTAINER_CHILDREN, check) for i, c in enumerate(children))


def _media(media: Any, path: str, check: _MessageCheck, *, attachment_only: bool = False) -> None:
    url = media.get("url") if isinstance(media, dict) else None
    if not isinstance(url, str):
        raise _fail(f"{path}.url", "This field is required.")
    if url.startswith(ATTACHMENT_SCHEME):
        name = url.removeprefix(ATTACHMENT_SCHEME)
        if name not in check.available:
            raise _fail(f"{path}.url", f"Unknown attachment {name!r}: upload it with this request.")
        check.referenced.add(name)
    elif attachment_only or not url.startswith(("http://", "https://")):
        raise _fail(
            f"{path}.url", "Must be an attachment://<filename> reference" + ("" if attachment_only else " or URL")
        )


_CHECKERS: dict[int, Callable[[Json, str, _MessageCheck], int]] = {
    ACTION_ROW: _action_row,
    BUTTON: _button,
    **dict.fromkeys(SELECTS, _select),
    SECTION: _section,
    TEXT_DISPLAY: _text_display,
    THUMBNAIL: _thumbnail,
    MEDIA_GALLERY: _gallery,
    FILE: _file,
    SEPARATOR: _separator,
    CONTAINER: _container,
}


def walk(components: list[Json]) -> Iterator[Json]:
    """Every component of a tree, parents before children (accessories and label children included)."""
    for component in components:
        yield component
        yield from walk(component.get("components") or [])
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                yield from walk([component[key]])


def message_text(message: Json) -> str:
    """What a message (or a message payload) says: its ``content``, then every Text Display of its components
    (Components V2), one per line. Text Displays mention and ping like content (reference.mdx "Text Display")."""
    texts = [str(c["content"]) for c in walk(list(message.get("components") or [])) if c.get("type") == TEXT_DISPLAY]
    return "\n".join(text for text in [str(message.get("content") or ""), *texts] if text)


def resolve_v2(components: list[Json], attachments: Mapping[str, Json]) -> list[Json]:
    """What Discord stores for a V2 tree: ``attachment://`` media become the attachment's unfurled media item
    (CDN ``url``, ``proxy_url``, size, ``content_type``, ``attachment_id``), File components get ``name`` and
    ``size``, and components without an ``id`` get sequential ones (reference.mdx "Anatomy of a Component")."""
    resolved = copy.deepcopy(components)
    used = {c["id"] for c in walk(resolved) if isinstance(c.get("id"), int)}
    free = (n for n in itertools.count(1) if n not in used)
    for component in walk(resolved):
        component.setdefault("id", next(free))
        for media in _media_items(component):
            _unfurl(media, attachments)
        if component.get("type") == FILE and (att := _attachment_for(component["file"], attachments)):
            component.update(name=att["filename"], size=att["size"])
    return resolved


def _media_items(component: Json) -> list[Json]:
    if component.get("type") == THUMBNAIL:
        return [component["media"]]
    if component.get("type") == MEDIA_GALLERY:
        return [item["media"] for item in component["items"]]
    if component.get("type") == FILE:
        return [component["file"]]
    return []


def _attachment_for(media: Json, attachments: Mapping[str, Json]) -> Json | None:
    url = str(media.get("url", ""))
    if url.startswith(ATTACHMENT_SCHEME):
        return attachments.get(url.removeprefix(ATTACHMENT_SCHEME))
    return next((a for a in attachments.values() if a["url"] == url), None)


def _unfurl(media: Json, attachments: Mapping[str, Json]) -> None:
    attachment = _attachment_for(media, attachments)
    if attachment is None:
        media.setdefault("proxy_url", media["url"])
        media.setdefault("flags", 0)
        return
    media.update(url=attachment["url"], proxy_url=attachment["proxy_url"], attachment_id=attachment["id"], flags=0)
    media.update({k: attachment[k] for k in ("width", "height", "content_type") if k in attachment})


# --------------------------------------------------------------------------------------------------
# Modals
# --------------------------------------------------------------------------------------------------


def check_modal(data: Json) -> None:
    """A type-9 callback's ``data``: custom_id 1-100, title 1-45, 1-5 components (Label, Text Display, or the
    deprecated Action Row with one Text Input or select), unique custom_ids."""
    _text(data.get("custom_id"), "data.custom_id", low=1, high=100)
    _text(data.get("title"), "data.title", low=1, high=45)
    components = _items(data.get("components"), "data.components", 1, 5)
    for index, component in enumerate(components):
        _check_modal_component(component, f"data.components[{index}]")
    ids = [c["custom_id"] for c in walk(components) if "custom_id" in c]
    if len(ids) != len(set(ids)):
        raise _fail("data.components", "custom_id values must be unique within a modal.")


def _check_modal_component(component: Any, path: str) -> None:
    kind = component.get("type") if isinstance(component, dict) else None
    if kind not in MODAL_TOP_LEVEL:
        raise _fail(f"{path}.type", f"Component type {kind} is not allowed in a modal.")
    if kind == TEXT_DISPLAY:
        _text(component.get("content"), f"{path}.content", low=1, high=4000)
    elif kind == LABEL:
        _text(component.get("label"), f"{path}.label", low=1, high=45)
        _text(component.get("description"), f"{path}.description", low=0, high=100, required=False)
        _check_input(component.get("component"), f"{path}.component", LABEL_CHILDREN, in_label=True)
    else:
        [child] = _items(component.get("components"), f"{path}.components", 1, 1)
        _check_input(child, f"{path}.components[0]", {TEXT_INPUT, *SELECTS}, in_label=False)


def _check_input(component: Any, path: str, allowed: set[int], *, in_label: bool) -> None:
    kind = component.get("type") if isinstance(component, dict) else None
    if kind not in allowed:
        raise _fail(f"{path}.type", f"Component type {kind} is not allowed here.")
    _text(component.get("custom_id"), f"{path}.custom_id", low=1, high=100)
    if kind == TEXT_INPUT:
        _check_text_input(component, path, in_label=in_label)
    elif kind == FILE_UPLOAD:
        _check_file_upload(component, path)
    elif kind == 3:
        _items(component.get("options"), f"{path}.options", 1, 25)


def _check_text_input(component: Json, path: str, *, in_label: bool) -> None:
    _int_in(component.get("style"), f"{path}.style", 1, 2)
    _int_in(component.get("min_length"), f"{path}.min_length", 0, 4000)
    _int_in(component.get("max_length"), f"{path}.max_length", 1, 4000)
    _text(component.get("value"), f"{path}.value", low=0, high=4000, required=False)
    _text(component.get("placeholder"), f"{path}.placeholder", low=0, high=100, required=False)
    if not in_label:  # the deprecated Action Row form still needs the input's own label
        _text(component.get("label"), f"{path}.label", low=1, high=45)


def _check_file_upload(component: Json, path: str) -> None:
    low, high = component.get("min_values"), component.get("max_values")
    _int_in(low, f"{path}.min_values", 0, 10)
    _int_in(high, f"{path}.max_values", 1, 10)
    if low is not None and high is not None and low > high:
        raise _fail(f"{path}.min_values", "Must be less than or equal to max_values.")
    if component.get("required", True) and low == 0:  # reference.mdx: min_values >= 1 unless required is false
        raise _fail(f"{path}.min_values", "Must be at least 1 when the upload is required.")


def modal_submission(modal: Json, values: Mapping[str, Any]) -> list[Json]:
    """``data.components`` of a MODAL_SUBMIT for ``modal`` (the type-9 data the bot sent) with the user's ``values``
    by custom_id: str for a Text Input, a list of option values for a select, a list of attachment objects for a
    File Upload, a bool for a Checkbox. Values are not held to the modal's min/max (a test may send what only a
    modified client could); a custom_id the modal does not have raises ValueError."""
    ids = itertools.count(1)
    unknown = set(values) - {c["custom_id"] for c in walk(modal["components"]) if "custom_id" in c}
    if unknown:
        raise ValueError(f"the modal has no input {sorted(unknown)}")
    return [_submitted(component, values, ids) for component in modal["components"]]


def _submitted(component: Json, values: Mapping[str, Any], ids: Iterator[int]) -> Json:
    kind = component["type"]
    answer: Json = {"type": kind, "id": component.get("id") or next(ids)}
    if kind == ACTION_ROW:
        answer["components"] = [_submitted(c, values, ids) for c in component["components"]]
    elif kind == LABEL:
        answer["component"] = _submitted(component["component"], values, ids)
    elif kind != TEXT_DISPLAY:
        answer["custom_id"] = component["custom_id"]
        answer.update(_input_value(component, values.get(component["custom_id"])))
    return answer


def _input_value(component: Json, value: Any) -> Json:
    kind = component["type"]
    if kind == TEXT_INPUT:  # an untouched input submits its pre-filled value
        return {"value": str(component.get("value") or "") if value is None else str(value)}
    if kind == FILE_UPLOAD:
        return {"values": [str(f["id"]) for f in value or []]}
    if isinstance(value, bool) or kind == 23:
        return {"value": bool(value)}
    return {"values": [str(v) for v in value or []]}
