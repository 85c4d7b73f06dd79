"""The step loss of learn.multitask (Akiyama & Sato, "Multitask learning and semi-supervised
learning with noisy data for audio tagging", DCASE 2019 task 2, Sec. 2.1-2.2 and Fig. 1):
the loss.type loss of losses.py on two heads, and the soft-pseudo-label MSE.

losses.get wraps the configured loss in Multitask when learn.multitask is on; Multitask
is called as every step loss is, loss(batch, outputs) -> (scalar, per-example weights,
figures), and delegates the rest (callbacks, variables) to the loss it wraps. All maths is
in keras.ops.
"""
from keras import ops

from heads import head_branches


def mse(y_true, y_pred):
    """Mean squared error per example, the mean over the K classes of (y_k - p_k)^2."""
    return ops.mean(ops.square(y_true - y_pred), axis=-1)


class Multitask:
    """The loss.type loss (`base`) trains the verified head on verified clips and the
    unverified head on unverified clips, weighed by loss.multitask_weights; with
    learn.pseudo_labels the verified head also learns soft pseudo labels with MSE weighed
    by loss.pseudo_weight (Fig. 1: the soft-pseudo-label MSE and the curated BCE both sit
    on the curated branch).

    learn.multitask_batches paper (the released train_model1/2.py): a batch is [batch_size
    verified | batch_size unverified | batch_size of the pseudo-label stream]
    (sampling.plan_streams), and the loss is the released code's bce + bce_noisy + C_SEMI *
    mse_semi: the sum over the streams of each stream's mean, that is the sum of the
    per-example terms over batch_size. A pseudo-label-stream example (Batch.semi 1; a
    verified clip with its own label or an unverified one with its pseudo label, mixed
    inside the stream) has the MSE term only: pseudo_weight * mse(t, verified head), t
    the mixed target lam t_a + (1 - lam) t_b, t of a member its label if verified, else its
    pseudo label (the released code mixes the targets, then takes the MSE). The other
    examples have the head terms only.

    split (the framework's earlier batches, half verified, half unverified): the loss is
    the mean over the batch, and with pseudo labels every unverified member also trains
    the verified head with pseudo_weight * MSE to its pseudo label.

    Head terms in the loss form of mixup: an example mixed from members a and b with weight
    lam is lam * (a's terms) + (1 - lam) * (b's terms), each member contributing by its own
    verified flag; for CCE and BCE, linear in the targets, this is exactly the loss of the
    mixed targets on the head both members train. The step reads the members from the
    batch (data.Batch, fields of needs() 'members', 'pseudo', 'semi'): y_a, y_b
    (label-smoothed targets), lam, verified (the first member's), verified_b, pseudo_a,
    pseudo_b, semi.

    Figures: loss_verified, loss_unverified (and loss_pseudo), each head's terms reduced as
    the loss is (paper: summed over batch_size, so each is its stream's mean), which add up
    to the loss.
    """

    needs_embedding = False
    masker = None

    @staticmethod
    def needs(cfg):
        learn = cfg['learn']
        pseudo = learn['pseudo_labels'] is not None
        semi = pseudo and learn['multitask_batches'] == 'paper'
        return frozenset({'members'} | ({'pseudo'} if pseudo else set())
                         | ({'semi'} if semi else set()))

    def __init__(self, base, cfg):
        self.base = base
        self.weights = dict(zip(('verified', 'unverified'), cfg['loss']['multitask_weights']))
        self.pseudo = cfg['learn']['pseudo_labels'] is not None
        self.paper = cfg['learn']['multitask_batches'] == 'paper'
        self.pseudo_weight = cfg['loss']['pseudo_weight']
        self.log_names = ('loss_verified', 'loss_unverified') + (
            ('loss_pseudo',) if self.pseudo else ())
        # streams per batch: what the per-example terms are summed over, a stream's size
        self.streams = (3 if self.pseudo else 2) if self.paper else 1

    @property
    def figure_names(self):
        return self.log_names

    @property
    def variables(self):
        return self.base.variables

    def callbacks(self):
        return self.base.callbacks()

    def per_example(self, y_true, y_pred, x=None, emb=None):
        """The verified head's loss (validation, scoring): what the model predicts with."""
        return self.base.per_example(y_true, head_branches(y_pred, 'verified'))

    def terms(self, y_pred, batch):
        """Per-example [B] weighted terms of each head: {verified, unverified[, pseudo]}."""
        heads = {name: head_branches(y_pred, name) for name in self.weights}
        lam = batch.lam
        semi = batch.semi if self.paper and self.pseudo else 0.0
        terms = {}
        for share, ver, y, pseudo in ((lam, batch.verified, batch.y_a, batch.pseudo_a),
                                      (1.0 - lam, batch.verified_b, batch.y_b, batch.pseudo_b)):
            for name, flag in (('verified', ver), ('unverified', 1.0 - ver)):
                term = (share * flag * (1.0 - semi) * self.weights[name]
                        * self.base.per_example(y, heads[name]))
                terms[name] = terms.get(name, 0.0) + term
            if self.pseudo and not self.paper:
                term = (share * (1.0 - ver) * self.pseudo_weight
                        * mse(pseudo, y_pred['scores']))
                terms['pseudo'] = terms.get('pseudo', 0.0) + term
        if self.pseudo and self.paper:
            terms['pseudo'] = semi * self.pseudo_weight * mse(self.semi_targets(batch),
                                                              y_pred['scores'])
        return terms

    @staticmethod
    def semi_targets(batch):
        """[B, K] targets of the pseudo-label stream: each member's label (verified) or
        pseudo label (unverified), mixed with lam."""
        def target(ver, y, pseudo):
            ver = ops.expand_dims(ver, -1)
            return ver * y + (1.0 - ver) * pseudo
        lam = ops.expand_dims(batch.lam, -1)
        return (lam * target(batch.verified, batch.y_a, batch.pseudo_a)
                + (1.0 - lam) * target(batch.verified_b, batch.y_b, batch.pseudo_b))

    def __call__(self, batch, outputs):
        terms = self.terms(outputs, batch)
        total = sum(terms.values())
        size = ops.sum(ops.ones_like(total)) / self.streams  # one stream's examples
        figures = {f'loss_{name}': ops.sum(term) / size for name, term in terms.items()}
        return ops.sum(total) / size, ops.ones_like(total), figures
