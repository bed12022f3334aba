"""Device utilisation during a timed region: NVML samples on a GPU, process CPU time otherwise.

On CUDA a background thread reads the GPU's utilisation and memory through NVML
(nvidia-ml-py) every ``interval`` seconds; the GPU fields are null on a CPU, where the CPU
utilisation (process CPU seconds over wall seconds times the cores torch uses) is given instead.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

import torch


@dataclass
class Utilisation:
    """What a :class:`UtilisationMonitor` saw; GPU fields are None on a CPU."""

    gpu_util_percent: float | None
    gpu_memory_mib: float | None  # peak used memory on the device (all processes, NVML)
    torch_peak_memory_mib: float | None  # peak memory torch allocated
    cpu_util_percent: float | None
    utilisation_samples: int  # NVML readings taken (0 on a CPU)


class UtilisationMonitor:
    """``with UtilisationMonitor(device) as monitor: ...`` then ``monitor.result``."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.result: Utilisation | None = None
        self._util: list[int] = []
        self._memory: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilisationMonitor:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        if self.device.type == "cuda":
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else 0
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import pynvml

        while not self._stop.is_set():
            self._util.append(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            self._memory.append(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            self._stop.wait(self.interval)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        if self._thread is None:
            busy = 100 * cpu / (wall * torch.get_num_threads()) if wall > 0 else 0.0
            self.result = Utilisation(None, None, None, busy, 0)
            return
        self._stop.set()
        self._thread.join()
        import pynvml

        pynvml.nvmlShutdown()
        mib = 1024 * 1024
        self.result = Utilisation(
            gpu_util_percent=sum(self._util) / max(len(self._util), 1),
            gpu_memory_mib=max(self._memory, default=0) / mib,
            torch_peak_memory_mib=torch.cuda.max_memory_allocated(self.device) / mib,
            cpu_util_percent=None,
            utilisation_samples=len(self._util),
        )
