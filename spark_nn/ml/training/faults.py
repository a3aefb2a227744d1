"""Test-only fault injection, switched on per job by a local property so that tests can check
Spark's task retry and the rematerialization of lost resident blocks. Each switch fires once:
the property is 'epoch:step:partition:flagfile', and the flag file records that it fired and
every later task that reached the same step (how many attempts ran, and which)."""
import os
import signal

from pyspark import TaskContext


KILL_PROPERTY = "spark_nn.test.killWorkerAt"
# the executor's JVM, not its Python worker: on a cluster (tests/test_cluster_faults.py), where
# the executor is lost with its cached blocks and resident files; step -1 is the setup pass
KILL_EXECUTOR_PROPERTY = "spark_nn.test.killExecutorAt"
DELETE_PROPERTY = "spark_nn.test.deleteBlocksAt"


def fault_switch(prop, what, epoch, step, partition):
    """True once, when the job's local property prop names this (epoch, step, partition) and its
    flag file does not exist yet. Every task that reaches the named step adds a line to the flag
    file: '<what> attempt <n>' for the one that fires, 'ran attempt <n>' for those after it (n
    being TaskContext.attemptNumber(): a retry counts up, a job run again starts at 0)."""
    ctx = TaskContext.get()
    spec = ctx.getLocalProperty(prop) if ctx else None
    if not spec:
        return False
    e, s, p, flag = spec.split(":", 3)
    if (int(e), int(s), int(p)) != (epoch, step, partition):
        return False
    fire = not os.path.exists(flag)
    with open(flag, "a") as f:
        f.write(f"{what if fire else 'ran'} attempt {ctx.attemptNumber()}\n")
    return fire


def maybe_kill_worker(epoch, step, partition):
    """SIGKILLs this Python worker when spark_nn.test.killWorkerAt names this step."""
    if fault_switch(KILL_PROPERTY, "killed", epoch, step, partition):
        os.kill(os.getpid(), signal.SIGKILL)


def executor_jvm_pid():
    """The pid of the JVM that started this Python worker (through pyspark's daemon, or
    directly), or None where there is none (the driver)."""
    pid = os.getpid()
    for _ in range(3):
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the parent's pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                return pid
    return None


def maybe_kill_executor(epoch, step, partition):
    """SIGKILLs this task's executor JVM when spark_nn.test.killExecutorAt names this step
    (epoch -1, step -1: the setup pass); '<flag file>.dir' gets the executor's local directory."""
    if fault_switch(KILL_EXECUTOR_PROPERTY, "killed executor", epoch, step, partition):
        jvm = executor_jvm_pid()
        if jvm is None:
            raise RuntimeError("killExecutorAt: this task runs in no executor JVM (local mode?)")
        flag = TaskContext.get().getLocalProperty(KILL_EXECUTOR_PROPERTY).split(":", 3)[3]
        with open(flag + ".dir", "w") as f:  # where the lost executor's files stay
            f.write(os.environ.get("SPARK_LOCAL_DIRS", ""))
        os.kill(jvm, signal.SIGKILL)


def delete_now(epoch, step, partition):
    """True once, when spark_nn.test.deleteBlocksAt names this step: the caller then deletes
    this partition's resident files before the step reads them (blocks.delete_block; this
    module imports nothing of spark_nn, so the pass can call maybe_kill_executor)."""
    return fault_switch(DELETE_PROPERTY, "deleted", epoch, step, partition)
