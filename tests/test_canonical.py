"""Paths and URLs reach the policy in a form that spelling tricks cannot change."""

import os

from firewall.canonical import canonical_path, canonical_url, extract_resources


def test_dot_segments_escapes_and_file_urls(tmp_path):
    cwd = str(tmp_path)
    assert canonical_path("/data/../etc/passwd", cwd=cwd, resolve_symlinks=False) == "/etc/passwd"
    assert canonical_path("/data/%2e%2e/etc/passwd", cwd=cwd, resolve_symlinks=False) == "/etc/passwd"
    assert canonical_path("/data/%252e%252e/etc/shadow", cwd=cwd, resolve_symlinks=False) == "/etc/shadow"
    assert canonical_path("file:///etc/passwd", cwd=cwd, resolve_symlinks=False) == "/etc/passwd"
    assert canonical_path("//etc//./passwd", cwd=cwd, resolve_symlinks=False) == "/etc/passwd"
    assert canonical_path("notes.txt", cwd=cwd, resolve_symlinks=False) == f"{cwd}/notes.txt"
    assert canonical_path("~/.ssh/id_rsa", cwd=cwd, resolve_symlinks=False) == os.path.expanduser("~/.ssh/id_rsa")


def test_symlinks_are_resolved_on_this_host(tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(secret.parent)
    assert canonical_path(str(root / "link" / "secret.txt"), cwd="/", resolve_symlinks=True) == str(secret)
    assert canonical_path(str(root / "link" / "secret.txt"), cwd="/", resolve_symlinks=False) == str(root / "link" / "secret.txt")


def test_urls():
    url = canonical_url("HTTPS://Example.COM:443/a/./b/../c%2Fd?q=1")
    assert url["canonical"] == "https://example.com/a/c/d?q=1"
    assert url["host"] == "example.com" and url["port"] is None
    assert canonical_url("http://user:pw@evil.test:8080/")["userinfo"] is True
    assert canonical_url("http://[::1")is None


def test_extract_finds_nested_paths_and_urls(tmp_path):
    args = {
        "paths": ["/data/a", "/data/../etc/shadow"],
        "options": {"destination": "out.txt", "note": "just words"},
        "url": "http://Example.com/x",
        "source": "file:///etc/hosts",
    }
    found = extract_resources(args, base_pointer="/params/arguments", cwd=str(tmp_path), resolve_symlinks=False)
    canon = {p["pointer"]: p["canonical"] for p in found["paths"]}
    assert canon["/params/arguments/paths/1"] == "/etc/shadow"
    assert canon["/params/arguments/options/destination"] == f"{tmp_path}/out.txt"
    assert canon["/params/arguments/source"] == "/etc/hosts"
    assert "/params/arguments/options/note" not in canon
    assert [u["canonical"] for u in found["urls"]] == ["http://example.com/x", "file:///etc/hosts"] or \
        sorted(u["canonical"] for u in found["urls"]) == ["file:///etc/hosts", "http://example.com/x"]
