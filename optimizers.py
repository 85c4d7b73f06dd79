"""Optimisers by name (config key `learn.optim`, registry OPTIMIZERS).

Adam is the framework's default (Fonseca et al.; He et al.; Akiyama & Sato's ResNet34).
SGD with momentum 0.9 and Nesterov momentum is what Akiyama & Sato's released code trains
EnvNet-v2 with (train_model4.py / train_model5.py, with cyclic cosine from 0.1 to 1e-6).
Keras's Nesterov update, v <- m v - lr g; w <- w + m v - lr g, is PyTorch's b <- m b + g;
w <- w - lr (g + m b) with v = -lr b (the same steps while the rate is constant).
"""
import keras

from config import lookup

OPTIMIZERS = {
    'Adam': lambda learn: keras.optimizers.Adam(learn['lr']),
    'SGD': lambda learn: keras.optimizers.SGD(learn['lr'], momentum=learn['momentum'],
                                              nesterov=learn['nesterov']),
}


def optimizer(learn):
    """A new optimiser of learn.optim at learn.lr (SGD: learn.momentum, learn.nesterov)."""
    return lookup(OPTIMIZERS, learn['optim'], 'learn.optim')(learn)
