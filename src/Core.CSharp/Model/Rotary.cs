using MechInterp.Kernels;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Rotary position embeddings (GPT-NeoX "rotate half" form, base 10000) on the first rotary_dim dims.</summary>
internal sealed class Rotary(int rotaryDim)
{
    // cos and the signed sin ([−sin, sin]) for the positions last asked for, [pos, rotary_dim]: built once, not every forward.
    private RotaryTables? tables;

    /// <summary>x [..., pos, head, d_head] → the same shape, positions encoded as rotations.</summary>
    public Tensor Apply(Tensor x)
    {
        long pos = x.shape[^3], dHead = x.shape[^1];
        var t = Tables(pos, x.dtype);
        var c = t.Cos.view(pos, 1, rotaryDim);
        var s = t.Sin.view(pos, 1, rotaryDim);
        if (rotaryDim == dHead)
            // rotate_half(x)·sin = roll(x, half)·[−sin, sin]: one roll instead of two narrows, a negation and a cat.
            return x.mul(c).addcmul_(x.roll(rotaryDim / 2, -1), s, 1);
        var rot = x.narrow(-1, 0, rotaryDim);
        var pass = x.narrow(-1, rotaryDim, dHead - rotaryDim);
        return cat([rot.mul(c).addcmul_(rot.roll(rotaryDim / 2, -1), s, 1), pass], -1);
    }

    /// <summary>The tables for positions 0..pos − 1, as the attention kernel takes them.</summary>
    public RotaryTables Tables(long pos, ScalarType dtype)
    {
        if (tables is not null && tables.Cos.shape[0] == pos && tables.Cos.dtype == dtype) return tables;
        using var scope = NewDisposeScope();
        long half = rotaryDim / 2;
        var inv = arange(0, half, dtype: ScalarType.Float64).mul(-2.0 * Math.Log(10000.0) / rotaryDim).exp();   // [half]
        var angles = arange(pos, dtype: ScalarType.Float64).unsqueeze(1).mul(inv.unsqueeze(0));                // [pos, half]
        var c = cat([angles.cos(), angles.cos()], 1).to(dtype);                                                  // [pos, rotary_dim]
        var s = cat([angles.sin().neg(), angles.sin()], 1).to(dtype);
        tables?.Cos.Dispose();
        tables?.Sin.Dispose();
        tables = new RotaryTables(c.contiguous().DetachFromDisposeScope(), s.contiguous().DetachFromDisposeScope());
        return tables;
    }
}
