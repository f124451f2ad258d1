"""Validate the grader's outputs against the schema files next to this module.

- ``results.json``: ``gradescope-results.schema.json`` with jsonschema (a test dependency).
- JUnit XML: ``junit.xsd`` with lxml when it is installed; otherwise with
  :func:`xsd_validate`, a small interpreter of the XSD subset ``junit.xsd`` is written in,
  which checks exactly these constraints of the schema: the root element is declared;
  each element's children are the ``xs:sequence`` of ``ref``s in order with their
  ``minOccurs``/``maxOccurs``; no undeclared child elements; text only in ``mixed`` or
  ``xs:string`` elements; required attributes present, no undeclared attributes; attribute
  values of type ``xs:nonNegativeInteger``, ``xs:decimal`` and the ``seconds`` simple type
  (decimal >= 0) parse as such.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from decimal import Decimal, InvalidOperation
from pathlib import Path

HERE = Path(__file__).resolve().parent
XS = "{http://www.w3.org/2001/XMLSchema}"


def validate_gradescope(doc: dict) -> None:
    import jsonschema
    schema = json.loads((HERE / "gradescope-results.schema.json").read_text())
    jsonschema.validate(doc, schema)


def validate_junit(text: str) -> str:
    """Raise on an invalid document; return which validator was used."""
    try:
        from lxml import etree
    except ImportError:
        xsd_validate(text, (HERE / "junit.xsd").read_text())
        return "structural (tests/grading/schemas.py)"
    schema = etree.XMLSchema(etree.parse(str(HERE / "junit.xsd")))
    schema.assertValid(etree.fromstring(text.encode()))
    return "lxml"


class Invalid(AssertionError):
    pass


def _simple_types(schema) -> dict[str, str]:
    out = {}
    for st in schema.findall(f"{XS}simpleType"):
        r = st.find(f"{XS}restriction")
        out[st.get("name")] = r.get("base") + ("+" if r.find(f"{XS}minInclusive") is not None else "")
    return out


def xsd_validate(text: str, xsd: str) -> None:
    schema = ET.fromstring(xsd)
    simple = _simple_types(schema)
    decls = {e.get("name"): e for e in schema.findall(f"{XS}element")}
    root = ET.fromstring(text.encode())

    def check_value(where: str, typ: str, value: str) -> None:
        typ = simple.get(typ, typ)
        if typ.startswith("xs:nonNegativeInteger"):
            if not value.isdigit():
                raise Invalid(f"{where}: {value!r} is not a non-negative integer")
        elif typ.startswith("xs:decimal"):
            try:
                d = Decimal(value)
            except InvalidOperation:
                raise Invalid(f"{where}: {value!r} is not a decimal") from None
            if typ.endswith("+") and d < 0:
                raise Invalid(f"{where}: {value!r} is negative")

    def check(el, path: str) -> None:
        decl = decls.get(el.tag)
        if decl is None:
            raise Invalid(f"{path}: element <{el.tag}> is not declared")
        ct = decl.find(f"{XS}complexType")
        if ct is None:                                    # a simple element (xs:string)
            if len(el):
                raise Invalid(f"{path}: <{el.tag}> may hold text only")
            return
        attrs = {a.get("name"): a for a in ct.findall(f"{XS}attribute")}
        for name in el.attrib:
            if name not in attrs:
                raise Invalid(f"{path}: attribute {name!r} is not allowed")
        for name, a in attrs.items():
            if a.get("use") == "required" and name not in el.attrib:
                raise Invalid(f"{path}: attribute {name!r} is required")
            if name in el.attrib and a.get("type"):
                check_value(f"{path}@{name}", a.get("type"), el.attrib[name])
        if ct.get("mixed") != "true" and (el.text or "").strip():
            raise Invalid(f"{path}: <{el.tag}> may not hold text")
        seq = ct.find(f"{XS}sequence")
        items = [] if seq is None else seq.findall(f"{XS}element")
        kids = list(el)
        i = 0
        for item in items:
            lo = int(item.get("minOccurs", "1"))
            hi = item.get("maxOccurs", "1")
            hi = 1 << 30 if hi == "unbounded" else int(hi)
            n = 0
            while i < len(kids) and kids[i].tag == item.get("ref") and n < hi:
                i, n = i + 1, n + 1
            if n < lo:
                raise Invalid(f"{path}: expected <{item.get('ref')}> here")
        if i < len(kids):
            raise Invalid(f"{path}: <{kids[i].tag}> is not allowed at this place")
        for k, kid in enumerate(kids):
            check(kid, f"{path}/{kid.tag}[{k}]")

    check(root, root.tag)
