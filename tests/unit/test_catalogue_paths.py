"""services.catalogue.paths: a path parameter, resolved, lies inside one of its roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contracts.errors import DomedError, ErrorCode
from contracts.manifest import Manifest, PathRule
from services.catalogue.paths import confined_params, inside, resolve, resolved_roots


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ (data/a.txt, out/, in-link -> data, out-link -> ../outside), outside/b.txt"""
    (tmp_path / "root" / "data").mkdir(parents=True)
    (tmp_path / "root" / "data" / "a.txt").write_text("a")
    (tmp_path / "root" / "out").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "b.txt").write_text("b")
    (tmp_path / "root" / "in-link").symlink_to(tmp_path / "root" / "data")
    (tmp_path / "root" / "out-link").symlink_to(tmp_path / "outside")
    (tmp_path / "root" / "out" / "dangling.tar").symlink_to(tmp_path / "outside" / "x.tar")
    return tmp_path.resolve()


@pytest.mark.parametrize(
    ("rel", "resolved"),
    [
        ("root", "root"),
        ("root/data", "root/data"),
        ("root/data/a.txt", "root/data/a.txt"),
        ("root/in-link", "root/data"),
        ("root/in-link/../out", "root/out"),
        ("root/data/../data/./a.txt", "root/data/a.txt"),
    ],
)
def test_existing_paths_inside_the_root_resolve(tree: Path, rel: str, resolved: str) -> None:
    rule = PathRule(roots=[str(tree / "root")])
    assert resolve(str(tree / rel), rule, [str(tree / "root")]) == str(tree / resolved)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{t}/outside", "outside its roots"),
        ("{t}/root/../outside/b.txt", "outside its roots"),
        ("{t}/root/out-link", "outside its roots"),
        ("{t}/root/out-link/b.txt", "outside its roots"),
        ("{t}/root/out-link/missing", "outside its roots"),
        ("{t}/rootless", "outside its roots"),  # a sibling sharing the root's prefix
        ("{t}/root/missing", "does not exist"),
        ("/", "outside its roots"),
        ("relative/path", "must be an absolute path"),
        ("", "must be an absolute path"),
        ("{t}/root/a\x00b", "NUL"),
    ],
)
def test_paths_that_must_exist_are_refused_with_why(tree: Path, value: str, reason: str) -> None:
    rule = PathRule(roots=[str(tree / "root")])
    with pytest.raises(ValueError, match=reason):
        resolve(value.format(t=tree), rule, [str(tree / "root")])


@pytest.mark.parametrize(
    ("value", "verdict"),
    [
        ("root/out/new.tar", "root/out/new.tar"),
        ("root/in-link/new.tar", "root/data/new.tar"),
        ("root/new.tar", "root/new.tar"),
        ("root", "outside its roots"),  # the root itself is no file to write
        ("root/out/dangling.tar", "outside its roots"),
        ("root/out-link/new.tar", "outside its roots"),
        ("root/../new.tar", "outside its roots"),
        ("root/no-dir/new.tar", "directory that does not exist"),
    ],
)
def test_a_path_that_need_not_exist_needs_its_directory_inside_the_root(
    tree: Path, value: str, verdict: str
) -> None:
    rule = PathRule(roots=[str(tree / "root")], must_exist=False)
    roots = [str(tree / "root")]
    if verdict.startswith("root"):
        assert resolve(str(tree / value), rule, roots) == str(tree / verdict)
    else:
        with pytest.raises(ValueError, match=verdict):
            resolve(str(tree / value), rule, roots)


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/a", "/a", True),
        ("/a/b", "/a", True),
        ("/ab", "/a", False),
        ("/", "/a", False),
        ("/anything", "/", True),
    ],
)
def test_inside_compares_whole_components(path: str, root: str, expected: bool) -> None:
    assert inside(path, root) is expected


def test_roots_are_resolved_and_tool_dir_is_filled(tree: Path) -> None:
    rule = PathRule(roots=["{tool_dir}/data", str(tree / "root" / "in-link"), "{tool_dir}"])
    assert resolved_roots(rule, tree / "root") == [
        str(tree / "root" / "data"),
        str(tree / "root" / "data"),
        str(tree / "root"),
    ]


def _manifest(tree: Path) -> Manifest:
    return Manifest.model_validate(
        {
            "id": "t.files",
            "version": 1,
            "entrypoint": ["cat", "{src}", "{dst}"],
            "parameters": {
                "type": "object",
                "properties": {"src": {"type": "string"}, "dst": {"type": "string"}},
            },
            "paths": {
                "src": {"roots": ["{tool_dir}/data"]},
                "dst": {"roots": [str(tree / "root" / "out")], "must_exist": False},
            },
        }
    )


def test_confined_params_resolves_every_path_parameter(tree: Path) -> None:
    params = {"src": str(tree / "root" / "in-link" / "a.txt"), "dst": str(tree / "root/out/x")}
    assert confined_params(_manifest(tree), params, tree / "root") == {
        "src": str(tree / "root" / "data" / "a.txt"),
        "dst": str(tree / "root" / "out" / "x"),
    }
    assert confined_params(_manifest(tree), {}, tree / "root") == {}


def test_confined_params_refuses_naming_the_parameter(tree: Path) -> None:
    params = {"src": str(tree / "root" / "data" / "a.txt"), "dst": str(tree / "outside" / "x")}
    with pytest.raises(DomedError) as caught:
        confined_params(_manifest(tree), params, tree / "root")
    assert caught.value.code == ErrorCode.INVALID_PARAMS
    assert caught.value.message.startswith("parameter 'dst' is outside its roots")
    assert caught.value.details == [{"path": "$.dst", "message": caught.value.message[16:]}]


def test_a_root_that_does_not_exist_confines_to_nothing(tree: Path) -> None:
    rule = PathRule(roots=[str(tree / "nowhere")])
    roots = resolved_roots(rule, tree)
    with pytest.raises(ValueError, match="does not exist"):
        resolve(str(tree / "nowhere" / "x"), rule, roots)
    assert not os.path.exists(tree / "nowhere")
