"""Why the ranks stop before the end: a signal (pre-emption, Ctrl-C), a launcher that died (the ranks would train on
as orphans), a damaged shard (found by the background check or by the reader), or a diverged run (a loss or weight
that is not finite); and when they save mid-epoch without stopping (--save-every).

Every rank checks before each step and they agree (the largest reason wins), so all save the same step."""
import math
import signal

from pipeline import ShardError

from . import distributed

SAVE_DUE, SIGNAL, DAMAGED_SHARD = 1, 2, 3
OTHER_RANK_DAMAGED = "another rank found a damaged shard (its error names it); the checkpoint is saved"


class Interrupted(BaseException):
    """SIGTERM/SIGINT before training started: nothing to save, the run ends with 128 + the signal's number. A
    BaseException, like KeyboardInterrupt, so that no `except Exception` of the set-up takes it for an error."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signal.Signals(signum).name} before training started: nothing to save yet")
        self.signum = signum


class AgreedError(Exception):
    """An error every rank raised alike after agreeing on it: each node's first rank alone prints it."""


class Diverged(AgreedError):
    """The loss or the weights are not finite: the run stops without saving (exit 1)."""


class AgreedShardError(ShardError, AgreedError):
    """A damaged shard the ranks agreed on (the first rank's message on every rank): exit 1."""


class StopRequest:
    """SIGTERM/SIGINT handling. With `at_once` (the set-up: loaders, model, compile), a signal raises Interrupted
    where the rank is; after `defer()` (the training loop) it sets a flag, and the loop finishes its step, saves
    and exits 128 + the signal's number."""

    def __init__(self, at_once=False, earlier=()):
        """earlier: signals received before (training.early_signals), handled now as if they came now."""
        self.signum = 0
        self.at_once = at_once
        self.why = ""  # what asked for the stop, when it was not a signal
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        for signum in earlier[:1]:
            self._handle(signum, None)

    @property
    def requested(self):
        return self.signum != 0

    def defer(self):
        self.at_once = False

    def launcher_gone(self, pid):
        """The launcher that started this rank died: stop as for SIGTERM (save, exit), not train on as an orphan."""
        if not self.signum:
            self.signum = signal.SIGTERM
            self.why = f"the launcher of this rank (pid {pid}) is gone"

    def _handle(self, signum, frame):
        self.signum = self.signum or signum
        if self.at_once:
            raise Interrupted(signum)


def stopped_status(world, stop):
    """The exit status of a run stopped by a signal and saved: 128 + the signal's number (agreed over ranks)."""
    return 128 + distributed.max_over_ranks(world, stop.signum)


def shard_problem(loaders, wait=False):
    """The first damaged shard this rank's loaders know of (with `wait`, the first one waits for its range)."""
    for i, loader in enumerate(loaders):
        problem = loader.shard_problem(wait=wait and i == 0)
        if problem:
            return problem
    return None


def agreed_reason(world, stop, problem, at_group_start=True, save_due=False):
    """0 (go on), SAVE_DUE, SIGNAL or DAMAGED_SHARD, the same on every rank (a host-side all-reduce). A damaged
    shard stops at once; a signal (or a launcher gone) only at the start of an accumulation group (so no gradient
    is half accumulated), where a mid-epoch save that is due (`save_due` on any rank) is made too."""
    if world.launcher_gone():
        stop.launcher_gone(world.launcher_pid)
    mine = DAMAGED_SHARD if problem else SIGNAL if stop.requested else SAVE_DUE if save_due else 0
    reason = distributed.max_over_ranks(world, mine, "the ranks' agreement before a step")
    return reason if reason == DAMAGED_SHARD or at_group_start else 0


def until_damaged(loader):
    """(batch, None) for each of the loader's batches; if its reader finds a damaged shard, (None, that ShardError's
    message) comes in place of the next batch and ends them, so the rank can agree on the stop with the others
    instead of dying alone."""
    try:
        for batch in loader:
            yield batch, None
    except ShardError as exc:
        yield None, str(exc)


def raise_if_damaged(world, problem):
    """Raises, on every rank, the ShardError of the first rank whose `problem` (its message or None) is set."""
    message = distributed.first_message(world, problem)
    if message:
        raise AgreedShardError(message)


# Under fp16 the gradient scaler halves its scale at every step it skips (non-finite gradients) and doubles it only
# after 2000 good steps, so a scale below 1 means the gradients overflowed step after step since the start or since
# long good stretches: the run no longer trains. DeepSpeed's dynamic loss scaler stops a run at the same floor
# (min_loss_scale = 1); torch's GradScaler has none and would go on skipping every step.
MIN_LOSS_SCALE = 1.0


def check_finite(world, learner, loss, epoch, step, steps, saving=False):
    """Raises Diverged on every rank when the loss (`loss`: a mean over steps and ranks) is not finite, or, before
    a checkpoint (`saving`) and under the fp16 gradient scaler, any weight. The scaler skips a step whose loss is
    not finite by design, which is not a divergence: then the weights decide, and the scale, which falls below
    MIN_LOSS_SCALE only when step after step is skipped. Otherwise a weight turns non-finite only with a non-finite
    loss in that step or the next, so the loss alone is checked at print intervals."""
    scaled = learner.scaler.is_enabled()
    lost = not math.isfinite(loss) and not scaled
    scale = learner.scaler.get_scale() if scaled else MIN_LOSS_SCALE
    skipping = scale < MIN_LOSS_SCALE
    broken = (saving or scaled) and not lost and not skipping and not learner.weights_finite()
    if distributed.any_rank(world, lost or skipping or broken):
        what = (f"the loss is {loss}" if lost else
                f"the fp16 loss scale fell to {scale:g}, below {MIN_LOSS_SCALE:g}: the gradients overflowed at "
                "step after step, which the scaler skips" if skipping else "the weights are not finite")
        raise Diverged(f"the run diverged at epoch {epoch}, step {step}/{steps}: {what}; stopped without saving, "
                       f"the last checkpoint is kept ({likely_cause(learner.optimizer)})")


# The weight decay is the likely cause of a divergence when both the decay and its step, lr x weight decay, are far
# beyond what trains: the CBAM authors use 1e-4 at lr 0.1 (a step of 1e-5), the recipes here (recipes/*.yaml) at most
# 0.02 under LAMB at lr 8e-3 (1.6e-4). A huge lr with the usual decay is the lr's fault, not the decay's.
WEIGHT_DECAY_LIMIT = 0.01
WEIGHT_DECAY_STEP_LIMIT = 0.01


def likely_cause(optimizer):
    """The advice a divergence ends with: the weight decay when it is absurd (each step scales the weights by
    1 - lr x wd, whose size alone then decides whether they blow up), else the lr."""
    for group in getattr(optimizer, "param_groups", ()):  # (None: a learner without one, as in unit tests)
        lr, decay = float(group.get("lr", 0.0)), float(group.get("weight_decay", 0.0))
        if decay >= WEIGHT_DECAY_LIMIT and lr * decay >= WEIGHT_DECAY_STEP_LIMIT:
            return (f"--weight-decay {decay:g} at lr {lr:g} takes {lr * decay:g} of every weight each step, far "
                    f"beyond what trains (the CBAM authors: 1e-4 at lr 0.1): try a much lower --weight-decay")
    return "try a lower --lr"
