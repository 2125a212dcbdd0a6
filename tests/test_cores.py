"""The machine's cores shared by smart_tuner processes (issue 14, item 11): real processes join and die."""

from __future__ import annotations

import subprocess
import sys

import torch

from smart_tuner.cores import CoreShare, machine_cores
from smart_tuner.hooks import Hook
from smart_tuner.train.trainer import Trainer

from .conftest import tiny_config

MEMBER = ("import sys, time\nfrom smart_tuner.cores import CoreShare\n"
          "CoreShare(sys.argv[1], cores=8).join()\nprint('joined', flush=True)\ntime.sleep(120)\n")


def start_member(directory) -> subprocess.Popen:
    """Another process in the share, alive until killed."""
    process = subprocess.Popen([sys.executable, "-c", MEMBER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "joined"
    return process


def test_live_processes_divide_the_cores_and_a_killed_one_stops_counting(tmp_path):
    directory = tmp_path / "share"
    first = start_member(directory)
    second = None
    try:
        mine = CoreShare(directory, cores=8).join()
        assert (mine.members(), mine.threads()) == (2, 4)
        second = start_member(directory)
        assert (mine.members(), mine.threads()) == (3, 2)
        first.kill()
        first.wait()
        assert (mine.members(), mine.threads()) == (2, 4)
        assert not (directory / str(first.pid)).exists()  # the dead process's entry is cleared
        mine.leave()
        assert not mine.entry.exists()
        assert CoreShare(directory, cores=8).threads() == 4  # an outsider sees the one member left
        assert CoreShare(directory, cores=1).threads() == 1  # never below one thread
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()


class ThreadCounter(Hook):
    """Records torch's thread count at every step; kills the other member of the share after step 3."""

    name = "threads"

    def __init__(self, member: subprocess.Popen):
        self.member, self.threads = member, []

    def on_step(self, stats):
        self.threads.append(torch.get_num_threads())
        if stats.step == 3:
            self.member.kill()
            self.member.wait()
        return []


def test_a_training_with_num_threads_0_takes_its_share_and_more_when_the_other_process_ends(
        corpus_en, tmp_path, monkeypatch):
    directory = tmp_path / "share"
    monkeypatch.setenv("SMART_TUNER_CORE_SHARE", str(directory))
    cores = machine_cores()
    config = tiny_config(corpus_en, tmp_path, train={"num_threads": 0, "max_steps": 8, "eval_every": 20})
    counter = ThreadCounter(start_member(directory))
    before = torch.get_num_threads()
    try:
        Trainer(config, tmp_path / "run", hooks=[counter], progress=False).fit()
    finally:
        torch.set_num_threads(before)
        counter.member.kill()
    assert counter.threads[0] == max(1, cores // 2)  # two members: half the cores each
    assert counter.threads[-1] == cores  # the other one died: all of them
    assert list(directory.iterdir()) == []  # the run left the share when it ended
