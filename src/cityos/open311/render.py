"""The spec's documents in its two formats. JSON leaves out members without a value (the Swagger
file types them as strings, which null is not); XML writes them as empty elements, as the spec's
samples do. Every text is escaped for its format (orjson for JSON, element text escaping for XML),
so a description holding markup is shown as the text it is."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape

import orjson

from cityos.open311.services import Attribute, Service

FORMATS = {"json": "application/json; charset=utf-8", "xml": "text/xml; charset=utf-8"}
Document = dict[str, Any]


def service_document(service: Service) -> Document:
    return {
        "service_code": service.code,
        "service_name": service.name,
        "description": service.description,
        "metadata": service.metadata,
        "type": service.type,
        "keywords": service.keywords,
        "group": service.group,
    }


def attribute_document(attribute: Attribute) -> Document:
    document: Document = {
        "variable": attribute.variable,
        "code": attribute.code,
        "datatype": attribute.datatype,
        "required": attribute.required,
        "datatype_description": attribute.datatype_description or None,
        "order": attribute.order,
        "description": attribute.description,
    }
    if attribute.values:
        document["values"] = [{"key": key, "name": name} for key, name in attribute.values]
    return document


def definition_document(service: Service) -> Document:
    return {"service_code": service.code, "attributes": [attribute_document(a) for a in service.attributes]}


def _bare(value: Any) -> Any:
    """A document without its null members (JSON)."""
    if isinstance(value, dict):
        return {key: _bare(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_bare(item) for item in value]
    return value


def to_json(document: Any) -> bytes:
    return orjson.dumps(_bare(document))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


# list members and the element name of each of their items
ITEM_NAMES = {"attributes": "attribute", "values": "value"}


def _element(name: str, value: Any, out: list[str]) -> None:
    if isinstance(value, Mapping):
        out.append(f"<{name}>")
        for key, item in value.items():
            _element(key, item, out)
        out.append(f"</{name}>")
    elif isinstance(value, list):
        out.append(f"<{name}>")
        for item in value:
            _element(ITEM_NAMES.get(name, name), item, out)
        out.append(f"</{name}>")
    elif value is None:
        out.append(f"<{name}/>")
    else:
        out.append(f"<{name}>{_text(value)}</{name}>")


def to_xml(root: str, item: str | None, documents: Iterable[Document] | Document) -> bytes:
    """`<root><item>..</item>..</root>` for a list of documents, `<root>..</root>` for one."""
    out = ['<?xml version="1.0" encoding="utf-8"?>']
    if item is None:
        assert isinstance(documents, Mapping)
        _element(root, documents, out)
    else:
        out.append(f"<{root}>")
        for document in documents:
            _element(item, document, out)
        out.append(f"</{root}>")
    return "".join(out).encode()


# per document kind: the XML root and item element (the spec's samples)
XML_SHAPES: dict[str, tuple[str, str | None]] = {
    "services": ("services", "service"),
    "definition": ("service_definition", None),
    "requests": ("service_requests", "request"),
    "errors": ("errors", "error"),
}


def render(kind: str, fmt: str, content: Any) -> bytes:
    if fmt == "json":
        return to_json(content)
    root, item = XML_SHAPES[kind]
    return to_xml(root, item, content)


def errors_document(status: int, descriptions: Iterable[str]) -> list[Document]:
    return [{"code": status, "description": text} for text in descriptions]
