"""A FHIR R4 endpoint on a free loopback port, for the tests: it checks each transaction Bundle
with fhir.resources, keeps resources by their conditional-update identifier (so a Bundle sent
twice updates, as a real server does), and can answer with a 400 OperationOutcome instead."""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any

TOKEN = "fhir-s3cret"


@dataclass
class FhirServer:
    """``fail``: answer 400 with an OperationOutcome; ``token``: the bearer token it wants."""

    fail: bool = False
    token: str = TOKEN
    posts: int = 0
    store: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.posts += 1
                status, answer = server.handle(self.headers.get("Authorization", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"fhir+http://127.0.0.1:{self.port}/fhir"

    @staticmethod
    def _outcome(text: str) -> dict[str, Any]:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
        }

    def handle(self, auth: str, body: bytes) -> tuple[int, dict[str, Any]]:
        from fhir.resources.R4B.bundle import Bundle

        if auth != f"Bearer {self.token}":
            return 401, self._outcome("no or wrong bearer token")
        if self.fail:
            return 400, self._outcome("Patient identifier system not recognised")
        try:
            doc = Bundle.model_validate_json(body)
        except ValueError as exc:
            return 400, self._outcome(f"not a valid Bundle: {exc}"[:500])
        if doc.type != "transaction":
            return 400, self._outcome("only transactions")
        responses = []
        for entry in doc.entry or []:
            assert entry.request is not None and entry.resource is not None
            key = str(entry.request.url)  # "Kind?identifier=system|value": one per key
            created = key not in self.store
            self.store[key] = json.loads(entry.resource.model_dump_json(exclude_none=True))
            responses.append({"response": {"status": "201 Created" if created else "200 OK"}})
        return 200, {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for key, r in self.store.items() if key.startswith(kind + "?")]

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(10)
