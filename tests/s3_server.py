"""A real S3 API server for the tests: moto's server mode, in its own process.

``python tests/s3_server.py PORT`` serves until killed. Its own process, not a thread of the test run:
delta-rs holds the GIL while it waits on some requests, which would starve a server thread.
"""
from __future__ import annotations

import sys


def complete_upload_result(app):
    """moto answers CompleteMultipartUpload with ``<CompleteMultipartUploadResponse>``; S3 says
    ``<CompleteMultipartUploadResult>``, and pyarrow takes anything else in a 200 for an error."""

    def fixed(environ, start_response):
        answer = {}

        def capture(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers
            return lambda data: None

        body = b"".join(app(environ, capture))
        headers = answer["headers"]
        if b"<CompleteMultipartUploadResponse" in body:
            body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(answer["status"], headers)
        return [body]

    return fixed


def main(port: int) -> None:
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = complete_upload_result(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]))
