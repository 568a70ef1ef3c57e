"""A real one-node Slurm on localhost for the tests: its own munged (a key made for it), slurmctld and slurmd in a
temporary folder, on free ports, run as root. Every client command needs `cluster.env` (SLURM_CONF).

    cluster = SlurmCluster.start(folder)   # or pytest.skip(reason) where it cannot run here
    cluster.command("sbatch", ...)
    cluster.stop()                         # every daemon and job process ended

Debian's packages (slurmctld slurmd slurm-client munge) provide the binaries; tools/setup_env.sh installs them when
it runs as root, and so does start() once, where they are missing."""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time

from ports import unclaimed_ports

BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo", "srun")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


class Unavailable(Exception):
    """Slurm cannot run here; the message (one line) says why."""


def _missing():
    return [name for name in BINARIES if not shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]


def ensure_installed():
    """Installs Debian's Slurm and MUNGE packages where a binary is missing (root with apt-get only), as
    tools/setup_env.sh does; raises Unavailable when they are still missing."""
    if not _missing():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"Slurm binaries missing ({', '.join(_missing())}) and no root with apt-get to install "
                          f"{' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if _missing():
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise Unavailable(f"Slurm binaries missing ({', '.join(_missing())}) and apt-get install "
                          f"{' '.join(PACKAGES)} failed: {why}")


def _sbin(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _node_resources():
    """(CPUs, RealMemory in MB) of this machine as slurmd sees them."""
    out = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, timeout=60).stdout
    cpus = re.search(r"\bCPUs=(\d+)", out)
    memory = re.search(r"\bRealMemory=(\d+)", out)
    if not cpus or not memory:
        raise Unavailable(f"slurmd -C did not report CPUs and RealMemory: {out.strip()[:200]!r}")
    return int(cpus.group(1)), int(memory.group(1))


def _last_lines(path, count=3):
    try:
        with open(path, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-count:]) or "(empty log)"


class SlurmCluster:
    """One node called localhost with this machine's CPUs, one default partition `debug`, requeue allowed."""

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)
        self.conf = os.path.join(self.folder, "slurm.conf")
        self.socket = os.path.join(self.folder, "munge", "munge.socket")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for name in list(self.env):  # a client inside this cluster's jobs must not see an outer allocation's
            if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and name != "SLURM_CONF":
                del self.env[name]
        self.daemons = {}  # name -> Popen (munged forks: its pid file)

    @classmethod
    def start(cls, folder, kill_wait=30):
        """A running cluster whose node is idle, or Unavailable with the reason from the daemons' logs."""
        ensure_installed()
        if os.geteuid() != 0:
            raise Unavailable("not root: slurmd must run as root to launch jobs")
        cluster = cls(folder)
        try:
            cluster._start(kill_wait)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, kill_wait):
        for sub in ("munge", "state", "spool", "log", "run"):
            os.makedirs(os.path.join(self.folder, sub), mode=0o700, exist_ok=True)
        os.chmod(self.folder, 0o755)  # munged refuses folders others may write to; jobs read the conf
        self._start_munge()
        cpus, memory = _node_resources()
        ctld_port, slurmd_port = unclaimed_ports(2)
        path = self.folder
        conf = f"""\
ClusterName=cbamtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s, at least 5)
AuthInfo=socket={self.socket},cred_expire=5
StateSaveLocation={path}/state
SlurmdSpoolDir={path}/spool
SlurmctldPidFile={path}/run/slurmctld.pid
SlurmdPidFile={path}/run/slurmd.pid
SlurmctldLogFile={path}/log/slurmctld.log
SlurmdLogFile={path}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={path}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait={kill_wait}
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
MessageTimeout=20
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as handle:
            handle.write(conf)
        open(os.path.join(path, "plugstack.conf"), "w").close()
        for name in ("slurmctld", "slurmd"):
            command = [_sbin(name), "-D", "-f", self.conf] + (["-N", "localhost"] if name == "slurmd" else [])
            log = open(os.path.join(path, "log", f"{name}.out"), "w")
            self.daemons[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True)
            log.close()
        self._wait_for_idle_node()

    def _start_munge(self):
        munge = os.path.join(self.folder, "munge")
        key = os.path.join(munge, "munge.key")
        with open(key, "wb") as handle:
            handle.write(os.urandom(1024))
        os.chmod(key, 0o400)
        log = os.path.join(munge, "munged.log")
        command = [_sbin("munged"), "--force", f"--socket={self.socket}", f"--key-file={key}",
                   f"--pid-file={munge}/munged.pid", f"--log-file={log}", f"--seed-file={munge}/munged.seed"]
        started = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if started.returncode != 0:
            why = (started.stderr.strip().splitlines() or ["no message"])[-1]
            raise Unavailable(f"munged did not start (exit {started.returncode}): {why}")
        credential = subprocess.run([_sbin("munge"), "-n", "-S", self.socket], capture_output=True, timeout=30)
        check = subprocess.run([_sbin("unmunge"), "-S", self.socket], input=credential.stdout, capture_output=True,
                               text=False, timeout=30)
        if credential.returncode != 0 or check.returncode != 0:
            why = (credential.stderr or check.stderr).decode(errors="replace").strip()
            raise Unavailable(f"munge credentials do not work here: {why or _last_lines(log)}")

    def _wait_for_idle_node(self, timeout=60):
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise Unavailable(f"{name} exited with {proc.returncode} at start: "
                                      f"{_last_lines(os.path.join(self.folder, 'log', name + '.log'))}")
            result = self.command("sinfo", "--noheader", "--nodes=localhost", "--format=%t", check=False)
            state = result.stdout.strip()
            if result.returncode == 0 and state == "idle":
                return
            time.sleep(0.2)
        raise Unavailable(f"the node is not idle after {timeout} s (sinfo: {state or 'no answer'}): slurmd log: "
                          f"{_last_lines(os.path.join(self.folder, 'log', 'slurmd.log'))}")

    def command(self, *args, check=True, timeout=60, **kwargs):
        """Runs a Slurm client command against this cluster (text output)."""
        result = subprocess.run(list(args), env=kwargs.pop("env", self.env), capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def job(self, job_id):
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once the job is forgotten."""
        result = self.command("scontrol", "--oneliner", "show", "job", str(job_id), check=False)
        if result.returncode != 0:
            return {}
        return dict(field.split("=", 1) for field in result.stdout.split() if "=" in field)

    def log(self, name):
        """The text of a daemon's log (slurmctld or slurmd)."""
        with open(os.path.join(self.folder, "log", f"{name}.log"), errors="replace") as handle:
            return handle.read()

    def stop(self):
        """Ends every job's processes (SIGKILL: a job still running here is a failed test's), then slurmd, slurmctld
        and munged."""
        self._kill_jobs()
        for name in ("slurmd", "slurmctld"):
            proc = self.daemons.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._kill_jobs()  # any started meanwhile
        pid = self._munged_pid()
        if pid:
            _terminate(pid)

    def processes_left(self):
        """Pids of this cluster's processes still running: daemons, slurmstepd and every process of its jobs."""
        pids = [proc.pid for proc in self.daemons.values() if proc.poll() is None] + self._job_pids()
        munged = self._munged_pid()
        return sorted(set(pids + ([munged] if munged and _alive(munged) else [])))

    def _munged_pid(self):
        with contextlib.suppress(OSError, ValueError), open(os.path.join(self.folder, "munge", "munged.pid")) as f:
            return int(f.read().strip())
        return None

    def _job_pids(self):
        """slurmstepd and the processes of the jobs: all that carry this cluster's SLURM_CONF but the daemons and
        their children (slurmctld's slurmscriptd: slurmctld does not stop without it)."""
        daemons = {proc.pid for proc in self.daemons.values()}
        return [pid for pid in _pids_with_env(f"SLURM_CONF={self.conf}")
                if pid not in daemons and _parent(pid) not in daemons and _alive(pid)]

    def _kill_jobs(self):
        for _ in range(3):  # a process may fork while its tree is being killed
            pids = self._job_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


def _pids_with_env(entry):
    """Pids of the processes (other than this one) started with `entry` ("NAME=value") in their environment."""
    found, wanted = [], entry.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid):
    """Whether `pid` runs (a zombie, which only its parent can reap, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pid, timeout=10):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and _alive(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
