"""Export jobs of the predictor: nnU-Net's spawn pool of export workers, or this process, behind one interface."""

import multiprocessing
from time import sleep

from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy

from nnunetv2_diffusion.inference.export import remove_partial_folder


class _Finished:
    """The result of a job that ran in this process, with the AsyncResult methods the collection loop uses."""

    def __init__(self, value):
        self.value = value

    def get(self, timeout=None):
        return self.value


def run_in_order(calls: list[tuple]):
    """Runs ``function(*arguments)`` for every ``(function, arguments)`` of ``calls``, in order, in one job; returns
    the last call's result (module-level, so a spawn worker can run it)."""
    result = None
    for function, arguments in calls:
        result = function(*arguments)
    return result


class ExportJobs:
    """Runs export functions in ``num_processes`` spawn workers (nnU-Net's export pool) or, with 0, right here.

    Use as a context manager: on leaving, the pool is terminated and the ``.partial`` folders of every output folder
    named through :meth:`add_folder` are removed when empty.
    """

    def __init__(self, num_processes: int):
        self.pool = multiprocessing.get_context("spawn").Pool(num_processes) if num_processes > 0 else None
        self.workers = list(self.pool._pool) if self.pool is not None else []
        self.pending, self.folders = [], set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        for folder in self.folders:
            remove_partial_folder(folder)

    def add_folder(self, folder: str) -> None:
        self.folders.add(folder)

    def wait_for_capacity(self) -> None:
        """Blocks while the workers are busy with more than two queued jobs each (nnU-Net's back-pressure)."""
        while self.pool is not None and check_workers_alive_and_busy(self.pool, self.workers, self.pending,
                                                                     allowed_num_queued=2):
            sleep(0.1)

    def submit(self, function, arguments: tuple):
        """Queues ``function(*arguments)``; returns a handle for :meth:`result`."""
        job = _Finished(function(*arguments)) if self.pool is None else self.pool.apply_async(function, arguments)
        self.pending.append(job)
        return job

    def result(self, job):
        """``job``'s return value, failing instead of hanging if an export worker dies (e.g. killed for memory)."""
        while True:
            if not all(worker.is_alive() for worker in self.workers):
                raise RuntimeError("A segmentation export worker died, likely killed by the OS for lack of RAM")
            try:
                return job.get(timeout=0.1)
            except multiprocessing.TimeoutError:
                pass

    def wait_for_all(self) -> None:
        for job in self.pending:
            self.result(job)
