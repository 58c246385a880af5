using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Rotary position embeddings (GPT-NeoX "rotate half" form, base 10000) on the first rotary_dim dims.</summary>
internal static class Rotary
{
    /// <summary>x [batch, pos, head, d_head] → the same shape, positions encoded as rotations.</summary>
    public static Tensor Apply(Tensor x, int rotaryDim)
    {
        long pos = x.shape[1], half = rotaryDim / 2;
        var inv = arange(0, half, dtype: x.dtype, device: x.device).mul(-2.0 * Math.Log(10000.0) / rotaryDim).exp();   // [half]
        var angles = arange(pos, dtype: x.dtype, device: x.device).unsqueeze(1).mul(inv.unsqueeze(0));              // [pos, half]
        var cos = cat([angles.cos(), angles.cos()], 1).view(1, pos, 1, rotaryDim);
        var sin = cat([angles.sin(), angles.sin()], 1).view(1, pos, 1, rotaryDim);
        var rot = x.narrow(-1, 0, rotaryDim);
        var pass = x.narrow(-1, rotaryDim, x.shape[^1] - rotaryDim);
        var x1 = rot.narrow(-1, 0, half);
        var x2 = rot.narrow(-1, half, half);
        var rotated = cat([x2.neg(), x1], -1);
        return cat([rot.mul(cos).add(rotated.mul(sin)), pass], -1);
    }
}
