"""A DICOM file's whole dataset as a tree of plain rows, and a filter over it (no Qt).

Sequences nest their items; a private tag names its creator; long values are cut; pixel data is
never read (the file is read up to it). The rows stay in this process: nothing here writes or sends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: values longer than this are cut, with the full length said
MAX_VALUE_CHARS = 120
#: multi-valued elements: at most this many values are shown
MAX_VALUES = 16
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


@dataclass(frozen=True)
class TagRow:
    """One element (or a sequence item, ``tag`` ""): what a tag browser shows on one line."""

    tag: str  # "(0010,0010)"
    name: str  # keyword, "Item 1", or "Private tag (creator ...)"
    vr: str
    value: str
    children: tuple[TagRow, ...] = ()

    def matches(self, needle: str) -> bool:
        """Keyword, tag number (with or without brackets and comma) or value contains ``needle``."""
        n = needle.strip().casefold()
        if not n:
            return True
        tag_digits = self.tag.replace("(", "").replace(")", "").replace(",", "").casefold()
        bare = n.replace("(", "").replace(")", "").replace(",", "").replace(" ", "")
        return (n in self.name.casefold() or n in self.value.casefold() or n in self.tag.casefold()
                or (bool(bare) and bare in tag_digits))


def _cut(text: str) -> str:
    text = text.replace("\r", " ").replace("\n", " ")
    if len(text) > MAX_VALUE_CHARS:
        return f"{text[:MAX_VALUE_CHARS]}... ({len(text)} characters)"
    return text


def value_text(elem) -> str:
    """A readable, bounded value of a pydicom DataElement (never the bytes of bulk data)."""
    from pydicom.multival import MultiValue

    vr = str(elem.VR)
    if elem.tag in _PIXEL_TAGS:
        return f"(pixel data, {elem.length if elem.length not in (None, 0xFFFFFFFF) else 'encapsulated'} bytes: not shown)"
    value = elem.value
    if value is None or value == "":
        return ""
    if vr in _BULK_VRS or isinstance(value, (bytes, bytearray)):
        n = len(value) if hasattr(value, "__len__") else elem.length
        return f"({n} bytes of {vr} data)"
    if isinstance(value, (MultiValue, list, tuple)):
        items = [str(v) for v in list(value)[:MAX_VALUES]]
        more = f" ... ({len(value)} values)" if len(value) > MAX_VALUES else ""
        return _cut("\\".join(items)) + more
    return _cut(str(value))


_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def _name(elem, ds) -> str:
    if elem.tag.is_private:
        if elem.tag.is_private_creator:
            return "Private creator"
        creator = getattr(elem, "private_creator", None) or ""
        if not creator:  # the block's owner: (gggg,00xx) for element xxyy
            owner = ds.get((elem.tag.group << 16) | ((elem.tag.element >> 8) & 0xFF))
            creator = str(owner.value) if owner is not None else ""
        name = elem.name if elem.name and elem.name != "Private tag data" else "Private tag"
        return f"{name} (creator {creator})" if creator else f"{name} (creator unknown)"
    return elem.keyword or elem.name or "Unknown tag"


def dataset_rows(ds) -> tuple[TagRow, ...]:
    """Every element of ``ds`` (file meta first when present), sequences nested by item."""
    rows = []
    meta = getattr(ds, "file_meta", None)
    if meta is not None and len(meta):
        rows.extend(_rows(meta))
    rows.extend(_rows(ds))
    return tuple(rows)


def _rows(ds) -> list[TagRow]:
    out = []
    for elem in ds:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        name = _name(elem, ds)
        vr = str(elem.VR)
        if vr == "SQ":
            items = tuple(TagRow("", f"Item {i + 1}", "", f"{len(item)} element(s)", tuple(_rows(item)))
                          for i, item in enumerate(elem.value or ()))
            out.append(TagRow(tag, name, vr, f"{len(items)} item(s)", items))
        else:
            try:
                value = value_text(elem)
            except Exception as exc:  # noqa: BLE001 (a malformed value is shown as such, never fatal)
                value = f"(unreadable: {type(exc).__name__})"
            out.append(TagRow(tag, name, vr, value))
    return out


def read_rows(path: str) -> tuple[TagRow, ...]:
    """The file's rows; pixel data is not read (a row says it is there)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    rows = dataset_rows(ds)
    if "Rows" in ds and "PixelData" not in ds:
        rows += (TagRow("(7FE0,0010)", "PixelData", "", "(pixel data: not read, not shown)"),)
    return rows


def filter_rows(rows: tuple[TagRow, ...], needle: str) -> tuple[TagRow, ...]:
    """Rows that match ``needle``, with the sequences and items leading to them; a matching
    sequence keeps all it holds."""
    if not needle.strip():
        return rows
    out = []
    for row in rows:
        if row.matches(needle):
            out.append(row)
            continue
        kids = filter_rows(row.children, needle)
        if kids:
            out.append(replace(row, children=kids))
    return tuple(out)


def count_rows(rows: tuple[TagRow, ...]) -> int:
    return sum(1 + count_rows(r.children) for r in rows)
