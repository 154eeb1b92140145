"""A local HTTP server for the published-weights tests: serves a folder laid out like the real hosts
(``timm/<repo>/resolve/main/model.safetensors``, ``models/<torchvision file>``) on the loopback address."""
import contextlib
import functools
import http.server
import threading


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requests = []          # paths asked for, in order (a fresh list per server)
    truncate = set()       # paths answered with a Content-Length larger than the body

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path in type(self).truncate:
            data = open(self.translate_path(self.path), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@contextlib.contextmanager
def serve_folder(root):
    """(base URL, handler class whose `requests` lists the paths asked for) while the block runs."""
    handler = type("Handler", (RecordingHandler,), {"requests": [], "truncate": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
