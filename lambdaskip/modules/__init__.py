"""nn.Modules: the λ-skip, the sequence mixers, blocks and deep stacks. Thin: parameters, shapes, ops calls."""
from lambdaskip.modules.attention import AttentionMixer
from lambdaskip.modules.block import ARCHS, MIXERS, LambdaSkipBlock, LambdaSkipStack, build_stack
from lambdaskip.modules.lambda_skip import NORMS, LambdaSkip
from lambdaskip.modules.constants import MixerConstants
from lambdaskip.modules.lti import IdentityMixer, LTIMixer
from lambdaskip.modules.mamba2 import GatedRMSNorm, Mamba2Cache, Mamba2Mixer
from lambdaskip.modules.s4d import S4DMixer

__all__ = [
    "ARCHS", "MIXERS", "NORMS", "AttentionMixer", "GatedRMSNorm", "IdentityMixer", "LTIMixer", "LambdaSkip",
    "LambdaSkipBlock", "LambdaSkipStack", "Mamba2Cache", "Mamba2Mixer", "MixerConstants", "S4DMixer", "build_stack",
]
