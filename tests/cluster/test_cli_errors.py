"""Bad input from a user, as real processes: one red line, a non-zero exit, nothing stored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cluster_helpers import free_port, wait_until

from conftest import Cluster


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert lines, f"no error printed (rc {out.returncode}); stdout: {out.stdout}"
    assert lines[-1].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[-1]


def test_join_errors_leave_the_cluster_empty(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2")
    target = host["url"].removeprefix("http://")
    base = ["join", target, "--advertise", "127.0.0.3", "--state-dir", str(cluster.tmp / "a")]

    untrusted = cluster.run(*base, POTLUCK_TOKEN=host["token"])  # no terminal to ask, no --yes
    assert untrusted.returncode == 2
    assert "lets its jobs run code on this machine" in one_error_line(untrusted)
    assert "pass --yes" in one_error_line(untrusted)
    base.append("--yes")

    wrong = cluster.run(*base, "--token", "x" * 32)
    assert wrong.returncode == 1
    line = one_error_line(wrong)
    assert "wrong token" in line and "x" * 32 not in line

    missing = cluster.run(*base)
    assert missing.returncode == 2 and "missing token" in one_error_line(missing)  # bad input

    mismatch = cluster.run(*base, POTLUCK_TOKEN=host["token"], POTLUCK_FAKE_VERSION_TORCH="2.0.1")
    assert mismatch.returncode == 1
    assert "versions differ from the host" in mismatch.stderr and "torch==" in mismatch.stderr
    assert "torch 2.0.1 (host has 2.13" in one_error_line(mismatch)

    port = free_port("127.0.0.2")
    unreachable = cluster.run("join", "--yes", f"127.0.0.2:{port}", "--advertise", "127.0.0.3",
                              "--state-dir", str(cluster.tmp / "a"), POTLUCK_TOKEN=host["token"])
    assert unreachable.returncode == 1
    line = one_error_line(unreachable)
    assert f"cannot reach host http://127.0.0.2:{port} (connection refused)" in line
    assert "is `potluck host` running there" in line

    not_mine = cluster.run(*base[:2], "--advertise", "127.0.0.3x", POTLUCK_TOKEN=host["token"])
    assert not_mine.returncode == 2 and "not an IP address" in one_error_line(not_mine)
    bad_port = cluster.run("status", "--host", "127.0.0.2:99999", POTLUCK_TOKEN=host["token"])
    assert bad_port.returncode == 2 and "bad port '99999'" in one_error_line(bad_port)

    assert cluster.json("status") == []
    assert host["proc"].alive()

    # From "elsewhere": --host/--token flags or the POTLUCK_HOST/POTLUCK_TOKEN variables.
    remote = cluster.run("status", "--json", POTLUCK_HOST=target, POTLUCK_TOKEN=host["token"])
    assert remote.returncode == 0 and remote.stdout.strip() == "[]", remote.stderr
    flags = cluster.run("jobs", "--host", host["url"], "--token", host["token"], "--json")
    assert flags.returncode == 0 and flags.stdout.strip() == "[]", flags.stderr
    bad = cluster.run("status", "--host", target, "--token", "y" * 24)
    assert bad.returncode == 1 and "wrong token" in one_error_line(bad)


def test_host_port_in_use_and_bad_job_config(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2")
    clash = cluster.run("host", "--advertise", "127.0.0.2", "--port", str(host["port"]),
                        "--lighthouse-port", "0", "--state-dir", str(cluster.tmp / "second"), "--no-local-agent")
    assert clash.returncode == 1
    line = one_error_line(clash)
    assert f"127.0.0.2:{host['port']}" in line and "--port" in line
    lh_clash = cluster.run("host", "--advertise", "127.0.0.2", "--port", "0", "--lighthouse-port",
                           str(host["lighthouse_port"]), "--state-dir", str(cluster.tmp / "third"), "--no-local-agent")
    assert lh_clash.returncode == 1 and "--lighthouse-port" in one_error_line(lh_clash)
    assert not (cluster.tmp / "second" / "potluck.db").exists()

    unknown = cluster.cli("train", "--model", "resnet9000", "--steps", "5")
    assert unknown.returncode == 2
    assert "unknown model 'resnet9000'" in one_error_line(unknown)
    yaml_file = cluster.tmp / "job.yaml"
    yaml_file.write_text("steps: 5\nglobal_batchh: 64\n")
    typo = cluster.cli("train", "--config", str(yaml_file))
    assert typo.returncode == 2 and "global_batchh" in one_error_line(typo)
    no_nodes = cluster.cli("train", "--steps", "5")
    assert no_nodes.returncode == 1 and "no live nodes" in one_error_line(no_nodes)
    assert cluster.json("jobs") == []

    not_local = cluster.run("host", "--advertise", "10.255.255.254", "--state-dir", str(cluster.tmp / "x"))
    assert not_local.returncode == 1 and "no interface of this machine" in one_error_line(not_local)
    nothing_running = cluster.run("status", "--state-dir", str(cluster.tmp / "nowhere"))
    assert nothing_running.returncode == 1 and "no running `potluck host`" in one_error_line(nothing_running)


def test_show_ports_lists_every_port(cluster: Cluster) -> None:
    out = cluster.run("host", "--show-ports", "--port", "9100", "--lighthouse-port", "9101", "--json")
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(out.stdout)
    assert [r["port"] for r in rows[:2]] == ["9100", "9101"]
    assert "gloo" in rows[2]["what"]


def test_host_json_is_one_line_a_script_can_read(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2", "--json")
    wait_until(lambda: host["proc"].log.read_text().strip(), 30, "the JSON line")
    lines = [line for line in host["proc"].log.read_text().splitlines() if line.startswith("{")]
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["url"] == host["url"] and info["port"] == host["port"] and "join" in info


def test_doctor_honours_potluck_host_and_token_and_shows_each_check_once(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2", "--name", "hostbox", local_agent=True)
    wait_until(lambda: "hostbox" in cluster.nodes(), 60, "the local agent to join")
    target = host["url"].removeprefix("http://")
    out = cluster.run("doctor", "--json", "--name", "friend", POTLUCK_HOST=target, POTLUCK_TOKEN=host["token"])
    checks = {c["id"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["host.token"]["status"] == "ok" and checks["host.coordinator"]["status"] == "ok", out.stdout

    out = cluster.cli("doctor", "--cluster", "--json", "--name", "hostbox", timeout=120)
    pairs = [(c["node"], c["id"]) for c in json.loads(out.stdout)["checks"]]
    assert ("hostbox", "versions") in pairs and ("hostbox", "host.token") in pairs
    assert len(pairs) == len(set(pairs)), sorted(p for p in pairs if pairs.count(p) > 1)


def test_the_token_stays_out_of_command_lines_and_logs(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2", local_agent=True)
    wait_until(lambda: "Ctrl-C stops the host" in host["proc"].log.read_text(), 30, "the join line")
    printed = host["proc"].log.read_text()
    assert host["token"] not in printed  # the output is redirected here: a log, not a terminal
    assert f"potluck join {host['url'].removeprefix('http://')}\n" in printed and "mode 0600" in printed
    for secret in ("token", "job-key", "host.json", "potluck.db", "local-agent/agent.log"):
        path = cluster.host_dir / secret
        wait_until(path.exists, 30, f"{secret} to be written")
        assert path.stat().st_mode & 0o077 == 0, f"{secret} is readable by others"
    for proc in Path("/proc").iterdir():  # no potluck process has the token in its argv
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert host["token"].encode() not in argv

    token_file = cluster.tmp / "friend-token"
    token_file.write_text(host["token"] + "\n")
    target = host["url"].removeprefix("http://")
    agent = cluster.spawn("agent-f", ["join", "--yes", target, "--token-file", str(token_file), "--name", "f",
                                      "--advertise", "127.0.0.3", "--state-dir", str(cluster.tmp / "f")])
    wait_until(lambda: "f" in cluster.nodes(), 60, "the friend to join with --token-file")
    assert agent.alive()
    empty = cluster.tmp / "empty"
    empty.write_text("")
    out = cluster.run("join", target, "--token-file", str(empty), "--state-dir", str(cluster.tmp / "g"))
    assert out.returncode == 2 and "is empty" in one_error_line(out)
