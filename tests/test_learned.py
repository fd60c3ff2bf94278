"""The pure parts of learning memory from llama-server (issue 22): its breakdown table, what
`--fit` changed, the learned-memory store, `memory_budget: auto`. Tables first, then the parser
against a real llama-server's own log."""

from __future__ import annotations

import os
import subprocess

import pytest

from support import harness
from llm_switch.learned import breakdown as bd
from llm_switch.learned.budget import auto_budget, mem_total
from llm_switch.learned.store import LearnedStore, file_identity

MIB = 1 << 20
HEADER = ("0.00.046.461 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   "
          "model   context   compute    unaccounted |")
HOST = "0.00.094.813 I common_memory_breakdown_print: |   - Host               |     550 =   393 +     128 +      28   |"
CUDA = ("common_memory_breakdown_print: |   - CUDA0 (NVIDIA GeForce RTX 4070) | 12282 = 3000 + (8900 =  7800 +  "
        "   900 +     200) +         382 |")
VULKAN = ("common_memory_breakdown_print: |   - Vulkan0 (AMD Radeon (RADV GFX1201)) | 30878 = 30000 + ( 700 = "
          " 600 + 64 + 36) + 178 |")


@pytest.mark.parametrize("lines, expected", [
    ([], {}),
    ([HOST], {}),  # a row without its header is not a table
    ([HEADER], {}),
    ([HEADER, HOST], {"Host": (None, 550, 550)}),
    ([HEADER, CUDA, HOST], {"CUDA0": (12282, 8900, 8900), "Host": (None, 550, 550)}),
    ([HEADER, VULKAN], {"Vulkan0": (30878, 700, 700)}),
    # start and exit both print a table: the last one counts
    ([HEADER, "common_memory_breakdown_print: |   - Host |  10 = 4 + 4 + 2 |", "other line", HEADER, HOST],
     {"Host": (None, 550, 550)}),
    # an empty self column: model + context + compute
    ([HEADER, "common_memory_breakdown_print: |   - Host   |    393 +  128 +  28  |"], {"Host": (None, None, 549)}),
])
def test_parse_breakdown(lines, expected):
    table = bd.parse_breakdown(lines)
    assert {k: (r.total, r.self, r.learned // MIB) for k, r in table.items()} == \
        {k: (None if t is None else t * MIB, None if s is None else s * MIB, n) for k, (t, s, n) in expected.items()}


@pytest.mark.parametrize("lines, device", [
    ([HEADER, HOST], "Host"),
    ([HEADER, CUDA, HOST], "CUDA0"),
    ([HEADER, HOST, VULKAN], "Vulkan0"),
])
def test_first_gpu_else_host(lines, device):
    assert bd.first_gpu(bd.parse_breakdown(lines)) == device


@pytest.mark.parametrize("lines, changes", [
    (["common_params_fit_impl: will leave 24098 >= 1024 MiB of system memory, no changes needed"], []),
    (["0.00.071 I common_params_fit_impl: context size reduced from 2048 to 256 -> need 3 MiB less memory in total"],
     [("context size", "2048", "256")]),
    (["llama_params_fit_impl: context size reduced from 262144 to 177152 -> need 5421 MiB less memory in total"],
     [("context size", "262144", "177152")]),
    (["common_params_fit_impl:   - CUDA0 (NVIDIA GeForce RTX 4070): 30 layers,   7000 MiB used,    200 MiB free"],
     [("layers on CUDA0", None, "30")]),
    (["srv load_model: context size reduced from 2048 to 256"], []),  # not fit's line
])
def test_parse_fit_changes(lines, changes):
    assert [(c.parameter, c.old, c.new) for c in bd.parse_fit_changes(lines)] == changes


def test_fit_change_describes_itself():
    assert bd.FitChange("context size", "256", "2048").describe() == "context size 2048 → 256"
    assert bd.FitChange("layers on CUDA0", "30").describe() == "layers on CUDA0 set to 30"


MEMINFO = "MemTotal:       24683420 kB\nMemFree:         1234 kB\n"


@pytest.mark.parametrize("device, kw, budget, source", [
    ("Host", {"meminfo": MEMINFO}, 24683420 * 1024 - 512 * MIB, "MemTotal"),
    ("CUDA0", {"breakdown": bd.parse_breakdown([HEADER, CUDA])}, 12282 * MIB - 512 * MIB, "breakdown"),
    ("CUDA0", {"nvml_total": 8 << 30}, (8 << 30) - 512 * MIB, "NVML"),
    ("CUDA0", {"meminfo": MEMINFO}, None, "no total known"),
    ("Host", {}, None, "no total known"),
])
def test_auto_budget(device, kw, budget, source):
    got, said = auto_budget(device, 512 * MIB, **kw)
    assert got == budget and source in said


def test_mem_total_of_this_machine_is_read():
    with open("/proc/meminfo") as f:
        assert mem_total(f.read()) == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert mem_total("nothing") is None


def test_store_survives_a_new_instance_and_drops_on_change(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 60)
    path = tmp_path / "state" / "learned-memory.json"
    ident = file_identity(model)
    LearnedStore(path).put("m", ident, ["-c", "4096"], {"Host": 550 * MIB})
    again = LearnedStore(path)  # as after a restart of the switch
    assert again.get("m", ident, ["-c", "4096"]) == {"Host": 550 * MIB}
    assert again.get("m", ident, ["-c", "8192"]) is None  # other arguments: dropped
    assert LearnedStore(path).get("m", ident, ["-c", "4096"]) is None
    again.put("m", ident, [], {"Host": 1})
    model.write_bytes(b"GGUF" + b"\1" * 90)  # the file changed
    assert LearnedStore(path).get("m", file_identity(model), []) is None
    assert LearnedStore(path).get("unknown", ident, []) is None


def test_store_starts_empty_from_a_broken_file(tmp_path):
    path = tmp_path / "learned-memory.json"
    path.write_text("{not json")
    assert LearnedStore(path).get("m", ["x", 1, 2], []) is None


def test_the_real_llama_server_breakdown_parses(llama_server, tmp_path):
    """llama-server at -lv 4 prints the table at start and at exit; Host's row is what it reports."""
    model = harness.make_model(tmp_path / "m.gguf", seed=5)
    port = harness.free_port()
    proc = subprocess.Popen([llama_server[0], "-m", str(model), "--port", str(port), "-lv", "4", "-c", "1024"],
                            env={**os.environ, **llama_server[1]}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        harness.wait_for(lambda: harness.http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 60,
                         what="llama-server ready")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    lines = out.splitlines()
    table = bd.parse_breakdown(lines)
    assert set(table) >= {"Host"}, out[-3000:]
    assert sum(1 for ln in lines if "memory breakdown [MiB]" in ln) == 2, out[-3000:]  # start and exit
    host = table["Host"]
    assert host.self and abs(host.self - (host.model + host.context + host.compute)) <= 2 * MIB, out[-3000:]  # rounded
    assert bd.parse_fit_changes(lines) == [], out[-3000:]  # the tiny model fits as given


# -- the scheduler's one call: report.py ---------------------------------------------------------

from llm_switch.learned import report  # noqa: E402


def test_from_log_gives_devices_totals_and_the_first_gpu():
    got = report.from_log([HEADER, CUDA, HOST, "common_params_fit_impl: context size reduced from 8192 to 4096"])
    assert got.devices == {"CUDA0": 8900 * MIB, "Host": 550 * MIB}
    assert got.totals == {"CUDA0": 12282 * MIB}
    assert got.first_gpu == "CUDA0"
    assert [c.describe() for c in got.fit_changes] == ["context size 8192 → 4096"]
    assert "breakdown" in got.source


def test_from_log_without_a_breakdown_says_why():
    got = report.from_log(["srv load_model: loading model"])
    assert got.devices == {} and "LLAMA_ARG_LOG_VERBOSITY=4" in got.source


@pytest.mark.parametrize("declared, learned, device, figure, warns", [
    (None, None, "Host", None, False),  # not known yet: runs alone
    (None, {"Host": 100}, "Host", 100, False),
    (None, {"Host": 100}, "CUDA0", None, False),
    (1000, {"Host": 1100}, "Host", 1000, False),  # within 10 %
    (1000, {"Host": 1101}, "Host", 1000, True),  # declared wins, and the log says so
    (1000, None, "Host", 1000, False),
])
def test_counted(declared, learned, device, figure, warns):
    got, warning = report.counted(declared, learned, device)
    assert got == figure and (warning is not None) == warns


def test_identity_of_a_cmd_and_of_a_template_unit(tmp_path):
    assert report.identity_of(("/bin/llama-server", "-m", "/m/a.gguf", "-c", "4"), "x.service") == \
        ("/m/a.gguf", ["/bin/llama-server", "-m", "/m/a.gguf", "-c", "4"])
    env = tmp_path / "llm-switch" / "models" / "mine.env"
    env.parent.mkdir(parents=True)
    env.write_text("# comment\nLLAMA_ARG_MODEL='/m/mine.gguf'\nLLAMA_ARG_CTX_SIZE=4096\n")
    assert report.identity_of(None, "llama-server@mine.service", str(tmp_path)) == \
        ("/m/mine.gguf", ["LLAMA_ARG_MODEL='/m/mine.gguf'", "LLAMA_ARG_CTX_SIZE=4096"])
    assert report.identity_of(None, "other.service", str(tmp_path)) == (None, [])


def test_remember_and_recall_across_a_restart(tmp_path):
    model = tmp_path / "a.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 60)
    identity = report.identity_of(("/bin/llama-server", "--model", str(model)), "u.service")
    learned = report.from_log([HEADER, HOST])
    report.remember(LearnedStore(tmp_path / "s.json"), "a", identity, learned)
    assert report.recall(LearnedStore(tmp_path / "s.json"), "a", identity) == {"Host": 550 * MIB}
    model.write_bytes(b"GGUF" + b"\1" * 61)  # a new file: learned again
    assert report.recall(LearnedStore(tmp_path / "s.json"), "a", identity) is None
