"""Background triage: a persistent job queue in the archive and worklist ordering.

Plain Python (no Qt). The model runs in a worker process (:mod:`.worker`); the queue
and the worklist only read and write the archive's SQLite file.
"""

from mammotriage.triage.queue import ExamResult, Job, TriageQueue
from mammotriage.triage.worklist import OperatingPoints, WorklistEntry, build_worklist

__all__ = ["ExamResult", "Job", "OperatingPoints", "TriageQueue", "WorklistEntry", "build_worklist"]
