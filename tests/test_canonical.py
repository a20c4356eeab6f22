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


def test_long_and_padded_paths_are_still_canonicalised(tmp_path):
    """Past PATH_MAX a path is not dropped: a server that shortens it opens what the policy saw."""
    cwd = str(tmp_path)
    dotted = "/data/" + "./" * 2100 + ".ssh/id_rsa"
    slashed = "/data" + "/" * 4100 + ".env"
    found = extract_resources({"path": dotted, "other": slashed}, base_pointer="/a", cwd=cwd, resolve_symlinks=True)
    assert sorted(p["canonical"] for p in found["paths"]) == ["/data/.env", "/data/.ssh/id_rsa"]
    assert "truncated" not in found


def test_more_references_than_extracted_is_flagged(tmp_path):
    args = {"path": "/data/.ssh/id_rsa", "pad": ["/data/ok.txt"] * 1100}
    found = extract_resources(args, base_pointer="/a", cwd=str(tmp_path), resolve_symlinks=False)
    assert found["truncated"] is True
    assert len(found["paths"]) == 1024
    few = extract_resources({"pad": ["/data/ok.txt"] * 1000}, base_pointer="/a", cwd=str(tmp_path), resolve_symlinks=False)
    assert "truncated" not in few and len(few["paths"]) == 1000


def test_file_uri_with_one_slash_is_absolute(tmp_path):
    assert canonical_path("file:/etc/passwd", cwd=str(tmp_path), resolve_symlinks=False) == "/etc/passwd"
    assert canonical_path("FILE:/etc/passwd", cwd=str(tmp_path), resolve_symlinks=False) == "/etc/passwd"
    found = extract_resources({"anything": "file:/etc/passwd"}, base_pointer="/a", cwd=str(tmp_path), resolve_symlinks=False)
    assert [p["canonical"] for p in found["paths"]] == ["/etc/passwd"]


def test_multi_line_content_is_not_a_path(tmp_path):
    """A file's contents that start with "/" (a C comment, a shebang) are not a file argument,
    unless they sit under a key that names one."""
    args = {"content": "/* licence */\nint main(void) { return 0; }\n", "path": "/data/a.c"}
    found = extract_resources(args, base_pointer="/a", cwd=str(tmp_path), resolve_symlinks=False)
    assert [p["canonical"] for p in found["paths"]] == ["/data/a.c"]
    keyed = extract_resources({"path": "/etc/pass\nwd"}, base_pointer="/a", cwd=str(tmp_path), resolve_symlinks=False)
    assert [p["raw"] for p in keyed["paths"]] == ["/etc/pass\nwd"]
