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


def _readings(arguments, cwd, bases=()):
    from firewall.canonical import extract_resources

    refs = extract_resources(arguments, base_pointer="/a", cwd=str(cwd), resolve_symlinks=True, bases=tuple(bases))
    return {ref["pointer"]: {ref["canonical"], *ref.get("alternatives", [])} for ref in refs["paths"]}


def test_git_indirections_count_as_the_places_they_name(tmp_path, monkeypatch):
    """Inside the root, a repository can take its objects, refs or working tree from outside:
    a worktree's commondir, objects/info/alternates, core.worktree; each place is a reading."""
    import subprocess

    root, outside = tmp_path / "root", tmp_path / "outside"
    for repo in (outside, root / "common", root / "alternates", root / "worktree"):
        repo.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (root / "common" / ".git" / "commondir").write_text(f"{outside / '.git'}\n")
    (root / "alternates" / ".git" / "objects" / "info" / "alternates").write_text(f"{outside / '.git' / 'objects'}\n")
    subprocess.run(["git", "-C", str(root / "worktree"), "config", "core.worktree", str(outside)], check=True)
    expected = {"common": outside / ".git", "alternates": outside / ".git" / "objects", "worktree": outside}
    for name, place in expected.items():
        readings = _readings({"repo_path": str(root / name)}, root)["/a/repo_path"]
        assert str(place) in readings, (name, readings)
    # An ordinary repository names nothing else.
    assert _readings({"repo_path": str(outside)}, root)["/a/repo_path"] == {str(outside)}


def test_revisions_and_variables_that_name_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for revision in ("HEAD:.env", ":0:.env", ":.env", "@{1}:.env"):
        assert _readings({"repo_path": "/r", "revision": revision}, tmp_path)["/a/revision"] == {"/r/.env"}, revision
    assert _readings({"revision": "main"}, tmp_path) == {}
    assert str(tmp_path / "home" / "repo") in _readings({"repo_path": "$HOME/repo"}, tmp_path)["/a/repo_path"]


def test_percent_00_is_a_name_character_and_symlinks_are_still_followed(tmp_path):
    """Servers do not percent-decode: "%00" is part of the name and the kernel follows the
    symlink before it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "shared").symlink_to(outside)
    readings = _readings({"path": f"{root}/shared/pwned%00.txt"}, root)["/a/path"]
    assert str(outside / "pwned%00.txt") in readings
    # What a server doing open(path, "w") writes.
    with open(f"{root}/shared/pwned%00.txt", "w") as handle:
        handle.write("x")
    assert (outside / "pwned%00.txt").exists()


def test_dot_dot_after_a_symlink_is_read_physically_and_lexically(tmp_path):
    """The kernel follows "link" before "..", Node's path.resolve drops "link/.." first:
    both places count."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "repo").mkdir(parents=True)
    (outside / "ssl").mkdir(parents=True)
    (outside / "passwd").write_text("secret\n")
    (root / "repo" / "link").symlink_to(outside / "ssl")
    raw = f"{root}/repo/link/../passwd"
    assert open(raw).read() == "secret\n"
    assert _readings({"path": raw}, root)["/a/path"] == {str(outside / "passwd"), str(root / "repo" / "passwd")}
    # Relative, from the server's directories too.
    relative = _readings({"path": "repo/link/../passwd"}, tmp_path, bases=[root])["/a/path"]
    assert str(outside / "passwd") in relative and str(root / "repo" / "passwd") in relative


def test_encoded_slashes_stay_inside_their_segment(tmp_path):
    """"%2f" is a name character to servers: "a%2fb%2fc%2fd/../../../../x" climbs four levels
    from the directory named "a%2fb%2fc%2fd". The decoded reading counts as well."""
    root = tmp_path / "r1" / "r2" / "r3" / "root"
    (root / "a%2fb%2fc%2fd").mkdir(parents=True)
    (tmp_path / "r1" / "etc").mkdir()
    (tmp_path / "r1" / "etc" / "passwd").write_text("secret\n")
    raw = f"{root}/a%2fb%2fc%2fd/../../../../etc/passwd"
    assert open(raw).read() == "secret\n"
    for encoded in ("a%2fb%2fc%2fd", "a%252fb%252fc%252fd"):
        readings = _readings({"path": f"{root}/{encoded}/../../../../etc/passwd"}, root)["/a/path"]
        assert str(tmp_path / "r1" / "etc" / "passwd") in readings, (encoded, readings)
        assert f"{root}/etc/passwd" in readings


def test_file_url_spellings_that_url_parsers_accept(tmp_path):
    """WHATWG parsers (Node's URL, pydantic's AnyUrl) drop surrounding spaces, tabs and
    newlines, read "\\" as "/" and make "file:etc/passwd" absolute: each is /etc/passwd."""
    from pydantic import AnyUrl, TypeAdapter

    spellings = [" file:///etc/passwd", "fi\nle:///etc/passwd", "fi\tle:///etc/passwd", "file:etc/passwd",
                 "file:\\\\\\etc\\passwd", "FILE:/./etc/%2e%2e/etc/passwd", "file://localhost/etc/passwd"]
    for raw in spellings:
        assert TypeAdapter(AnyUrl).validate_python(raw).path == "/etc/passwd", raw
        for key in ("uri", "path"):
            assert "/etc/passwd" in _readings({key: raw}, tmp_path)[f"/a/{key}"], (key, raw)
    # Under a key that does not name a file, a URL-like value counts; prose does not.
    assert "/etc/passwd" in _readings({"note": " file:///etc/passwd"}, tmp_path)["/a/note"]
    assert _readings({"note": "File: notes from Monday"}, tmp_path) == {}


def test_ordinary_paths_have_one_reading(tmp_path):
    """No extra readings (and no false denials) for plain paths inside the root."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    for raw in ("sub/notes.txt", f"{tmp_path}/sub/./notes.txt", f"{tmp_path}/link/notes.txt",
                f"file://{tmp_path}/sub/notes.txt", f"{tmp_path}/sub/x/../notes.txt"):
        assert _readings({"path": raw}, tmp_path, bases=[tmp_path])["/a/path"] == {f"{tmp_path}/sub/notes.txt"}, raw


def test_relative_paths_are_read_from_every_reading_of_the_calls_directory(tmp_path):
    """mcp-server-git opens repo_path as written: "a%2fb" is one directory, two levels
    below which "../../x" lies outside the root."""
    root = tmp_path / "root"
    (root / "a%2fb").mkdir(parents=True)
    readings = _readings({"repo_path": f"{root}/a%2fb", "files": ["../../etc/passwd"]}, root)["/a/files/0"]
    assert str(tmp_path / "etc" / "passwd") in readings and str(root / "etc" / "passwd") in readings
