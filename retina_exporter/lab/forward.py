"""A TCP port forward from this process's namespace (e.g. 127.0.0.1:10093 on the host) to an address inside a
lab namespace, so that a browser, curl or Prometheus on the host reach the agent running in the lab's node."""

from __future__ import annotations

import socket
import threading

from retina_exporter.lab.topology import in_netns


class PortForward:
    def __init__(self, listen: tuple[str, int], target_ns: str, target: tuple[str, int]) -> None:
        self.target_ns = target_ns
        self.target = target
        self._srv = socket.create_server(listen, reuse_port=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="port-forward", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._srv.getsockname()[:2]

    def start(self) -> "PortForward":
        self._thread.start()
        return self

    def _connect_inside(self) -> socket.socket:
        # The socket is created in the target namespace and keeps belonging to it.
        return in_netns(self.target_ns, socket.create_connection, self.target, 5)

    def _accept_loop(self) -> None:
        self._srv.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self._connect_inside()
        except OSError:
            client.close()
            return

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        t.start()
        pipe(client, upstream)
        t.join(30)
        client.close()
        upstream.close()

    def stop(self) -> None:
        self._stop.set()
        self._srv.close()
