"""Loss masking of the staged mode (learn.mode staged, keys learn.mask_method, mask_top_k,
mask_alpha): the mode's per-example weights that the Trainer multiplies into the loss's
own (losses.StepLoss) while stage 2 runs.
"""
import keras
import numpy as np
from keras import ops


class Masker:
    """Loss masking of He et al., "Staged training strategy and multi-activation for audio
    tagging with noisy and sparse multi-label data" (DCASE 2019), stage 2.

    threshold: eta_t = alpha eta_(t-1) + (1 - alpha) T_t with T_t the k-th largest loss of
    the batch, eta initialised from the first batch; unverified examples whose loss is
    above eta get weight 0. The mask uses eta_t, which already includes the current batch.
    topk: the k largest losses among the unverified examples of each batch get weight 0.
    The paper prints the mask as (1 - M_i V_i) with V_i = 1 for verified data, which would
    mask the verified data; its text says the noisy samples are ignored, so only
    unverified examples are ever masked here.
    """

    log_names = ('eta', 'masked')

    def __init__(self, method, k, alpha, active=True):
        self.method, self.k, self.alpha = method, k, alpha
        self.eta = keras.Variable(0.0, trainable=False, name='eta')
        self.started = keras.Variable(0.0, trainable=False, name='eta_started')
        # 1 while the stage masks: a variable, so that the compiled step need not change.
        self.active = keras.Variable(float(active), trainable=False, name='mask_active')
        self.variables = [self.eta, self.started, self.active]  # saved by a run's backup

    def activate(self, on):
        self.active.assign(1.0 if on else 0.0)

    def __call__(self, losses, verified):
        k = min(self.k, losses.shape[0])
        unverified = 1.0 - verified
        if self.method == 'topk':
            # Verified examples sort below every unverified one, so the top k are the k
            # largest unverified losses (fewer if the batch has fewer unverified).
            ranked = ops.where(unverified > 0, losses, -np.inf)
            kth = ops.sort(ranked)[-k]
            masked = unverified * ops.cast((ranked >= kth) & (unverified > 0), 'float32')
        else:
            # eta only moves while masking is active (it is initialised from the first
            # batch of the masking stage, not from stage 1).
            t = ops.sort(losses)[-k]
            eta = ops.where(self.started > 0, self.alpha * self.eta + (1 - self.alpha) * t, t)
            eta = ops.where(self.active > 0, eta, self.eta)
            self.eta.assign(eta)
            self.started.assign(ops.maximum(self.started, self.active))
            masked = unverified * ops.cast(losses > eta, 'float32')
        masked = masked * self.active
        # Outside the masking stage its figures are missing (NaN), not zero.
        figures = {'eta': self.eta.value, 'masked': ops.mean(masked)}
        return 1.0 - masked, {name: ops.where(self.active > 0, value, np.nan)
                              for name, value in figures.items()}
