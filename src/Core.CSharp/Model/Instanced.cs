using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// Inside the model every activation has a leading instance dimension: [instance, batch, pos, ...]. An
/// ordinary model is one instance (its parameters have no instance dimension and are viewed with one here),
/// so ordinary and batched models run the same code. Hook points hide the instance dimension of an
/// ordinary model, so its hooks see TransformerLens's shapes.
/// </summary>
internal static class Instanced
{
    /// <summary>A parameter as [instance, ..shape]: itself in a batched model, a view with instance 1 otherwise.</summary>
    public static Tensor Weight(Tensor p, bool batched) => batched ? p : p.unsqueeze(0);

    /// <summary>
    /// A per-instance vector parameter ([d] or [instance, d]) shaped to broadcast against an activation of
    /// the given rank whose last dimension it matches: [d], or [instance, 1, .., 1, d].
    /// </summary>
    public static Tensor Broadcast(Tensor p, bool batched, long activationRank)
    {
        if (!batched) return p;
        return p.view([p.shape[0], .. Enumerable.Repeat(1L, (int)(activationRank - p.dim())), .. p.shape[1..]]);
    }

    /// <summary>x [instance, ..., d_in] · W [instance, d_in, d_out] + b [instance, d_out] → [instance, ..., d_out], one batched GEMM.</summary>
    public static Tensor Linear(Tensor x, Tensor w, Tensor? b)
    {
        long instances = x.shape[0], dIn = x.shape[^1], dOut = w.shape[^1];
        var lead = x.shape[..^1];
        var flat = x.reshape(instances, -1, dIn);                          // [instance, rows, d_in]
        var y = flat.bmm(w);                                               // [instance, rows, d_out]
        if (b is not null) y = y.add(b.unsqueeze(1));
        return y.view([.. lead, dOut]);
    }
}
