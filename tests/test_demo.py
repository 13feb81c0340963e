"""tools/demo.py as a newcomer meets it: arguments checked at once, a dependent workflow runs its producer
first, progress and ComfyUI's own error in the terminal."""

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "tools" / "demo.py"


def demo(*args, timeout=600):
    return subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--workflow", "does_not_exist"], "invalid choice: 'does_not_exist' (choose from 'tokenflow_edit'"),
    (["--video", "/nonexistent.mp4"], "--video: no such file: /nonexistent.mp4"),
    (["--size", "100"], "--size must be a positive multiple of 8"),
])
def test_bad_arguments_are_named_before_any_setup(args, message):
    result = demo("--check-args", *args, timeout=30)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("workflow", ["tokenflow_fast", "TokenFlow - fast recipe", "TokenFlow - fast recipe.json"])
def test_a_workflow_is_named_by_its_name_or_its_title(workflow):
    """The demo takes what the template browser shows (the title, or the file's name) as well as the name."""
    from demo import parse_args

    assert parse_args(["--workflow", workflow]).workflow == "tokenflow_fast"


def test_a_dependent_workflow_runs_its_producer_first(tmp_path, tiny_models):
    result = demo("--workflow", "tune_a_video_reuse", "--frames", "2", "--size", "64", "--steps", "1",
                  "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running tune_a_video_edit first" in result.stdout
    assert "running VE_OneShotTune" in result.stdout and "loss=" in result.stdout  # progress with the loss
    edited = [Path(line.split(": ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("edited video:")]
    assert {p.name for p in edited} == {"tune_a_video_reuse_00001_.mp4", "tune_a_video_reuse_before_after_00001_.mp4"}
    capture = cv2.VideoCapture(str(edited[0]))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2

    failed = demo("--frames", "40", "--size", "64", "--steps", "1", "--workdir", str(tmp_path))
    assert failed.returncode == 1
    assert "VE_LoadVideo failed" in failed.stderr and "lower n_frames to 24" in failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr


def test_ctrl_c_stops_with_one_line_and_leaves_nothing(tmp_path, tiny_models):
    """Ctrl-C while the tuning runs: ComfyUI interrupts the graph, its server stops, and the demo says so in one
    line with no traceback; no file was written."""
    import signal
    import threading
    import urllib.request

    import psutil

    # a test run started without job control (in the background) passes SIGINT on as ignored: a terminal's
    # Ctrl-C reaches the demo with the default handler, so the demo gets that back
    process = subprocess.Popen([sys.executable, str(DEMO), "--frames", "2", "--size", "64", "--steps", "500",
                                "--workdir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    shown, tuning = [], threading.Event()

    def read_stdout():
        for chunk in iter(lambda: process.stdout.read1(4096), b""):
            shown.append(chunk.decode(errors="replace"))
            if "running VE_OneShotTune" in "".join(shown):
                tuning.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        assert tuning.wait(timeout=300), "".join(shown)
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=120)[1].decode()
    finally:  # a failed run must not leave the demo or its ComfyUI computing for the rest of the suite
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()
    reader.join(timeout=10)
    stdout = "".join(shown)
    assert process.returncode == 130, stdout + stderr
    assert stderr.strip().splitlines()[-1] == "stopped; nothing was written", stderr
    assert "Traceback" not in stdout + stderr
    written = [p for p in tmp_path.glob("*/**/*") if p.is_file() and not p.is_symlink()
               and p.relative_to(tmp_path).parts[0] in ("output", "models")]
    assert not written
    url = next(word for word in stdout.split() if word.startswith("http://127.0.0.1:"))
    with pytest.raises(OSError):  # the server is gone
        urllib.request.urlopen(f"{url}/system_stats", timeout=5)
