"""Probe 5b (after the fix for p5): a real raw TCP tunnel (SSH-like) still passes with
non_mcp: pass; a tunnel trickling letters without a line end is closed at the deadline.
Run: python probe/p5b_raw_tcp_still_passes.py"""
import socket, sys, tempfile, threading, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from common import *

echo = socket.socket(); echo.bind(("127.0.0.1", 0)); echo.listen(4); eport = echo.getsockname()[1]
def serve():
    while True:
        try: c, _ = echo.accept()
        except OSError: return
        def one(c=c):
            with c:
                while d := c.recv(4096): c.sendall(b"echo:" + d)
        threading.Thread(target=one, daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
tmp = Path(tempfile.mkdtemp(prefix="p5b-"))
with firewall(tmp) as (fw, proc, log):
    s = connect_tunnel(fw, "127.0.0.1", eport)
    s.sendall(b"SSH-2.0-probe\r\n"); s.settimeout(3)
    print("ssh-like tunnel:", s.recv(100)); s.close()
    s = connect_tunnel(fw, "127.0.0.1", eport); t = time.monotonic(); got = b""
    try:
        while time.monotonic() - t < 15:
            s.sendall(b"a"); time.sleep(0.2)
    except OSError: pass
    print("letters without a line end: closed after", round(time.monotonic() - t, 1), "s")
    s.close()
    print(tail(log, 5))
echo.close()
