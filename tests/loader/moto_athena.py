"""The local AWS API server (moto) with the two Athena named-query operations moto 5.2.5 lacks.

moto keeps named queries (CreateNamedQuery, GetNamedQuery, ListNamedQueries) but answers BatchGetNamedQuery and
UpdateNamedQuery with "not implemented". This adds both to its Athena responder over moto's own stored queries,
with the service's rules that matter to the loader (at most 50 ids a batch, unknown ids reported as unprocessed,
an update keeps the query's id, database and workgroup), then runs moto's server:

    python -m tests.loader.moto_athena -H 127.0.0.1 -p PORT

A moto that implements them natively is used as it is.
"""

from __future__ import annotations

import json
import sys

from moto.athena.responses import AthenaResponse


def _described(query) -> dict:
    return {
        "Name": query.name,
        "Description": query.description,
        "Database": query.database,
        "QueryString": query.query_string,
        "NamedQueryId": query.id,
        "WorkGroup": query.workgroup.name,
    }


def batch_get_named_query(self):
    ids = self._get_param("NamedQueryIds") or []
    if not 1 <= len(ids) <= 50:
        return self.error("NamedQueryIds must hold 1 to 50 ids", 400)
    found, unprocessed = [], []
    for query_id in ids:
        query = self.athena_backend.get_named_query(query_id)
        if query is None:
            unprocessed.append({"NamedQueryId": query_id, "ErrorCode": "INVALID_INPUT", "ErrorMessage": "not found"})
        else:
            found.append(_described(query))
    return json.dumps({"NamedQueries": found, "UnprocessedNamedQueryIds": unprocessed})


def update_named_query(self):
    query = self.athena_backend.get_named_query(self._get_param("NamedQueryId"))
    if query is None:
        return self.error("NamedQuery not found", 400)
    query.name = self._get_param("Name")
    query.description = self._get_param("Description")
    query.query_string = self._get_param("QueryString")
    return json.dumps({})


def install() -> None:
    for name, method in (("batch_get_named_query", batch_get_named_query), ("update_named_query", update_named_query)):
        if not hasattr(AthenaResponse, name):
            setattr(AthenaResponse, name, method)


if __name__ == "__main__":
    install()
    from moto.server import main

    main(sys.argv[1:])
