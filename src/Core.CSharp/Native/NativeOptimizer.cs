using static TorchSharp.torch;

namespace MechInterp.Native;

/// <summary>
/// The native arithmetic behind <see cref="Training.InstanceAdamW"/>: one AdamW step, the squared gradient
/// norms for clipping and the clip's scaling, each one pass over a parameter seen as [instances, n].
/// </summary>
internal static unsafe class NativeOptimizer
{
    /// <summary>One AdamW step of p in place, with its moments m and v (all shaped as p, n elements per instance).</summary>
    public static void AdamWStep(Tensor p, Tensor grad, Tensor m, Tensor v, int instances, double[] lr, double[] weightDecay,
                                 double beta1, double beta2, double eps, int step)
    {
        long n = Require(p, instances, "parameter");
        foreach (var (t, name) in new[] { (grad, "gradient"), (m, "first moment"), (v, "second moment") })
            if (Require(t, instances, name) != n) throw new ArgumentException($"the {name} has {t.numel()} elements for a parameter of {p.numel()}");
        fixed (double* lrs = lr, wds = weightDecay)
            Ensure.Ok(NativeMethods.mi_adamw_step_f32(NativeTensors.Ptr(p), NativeTensors.Ptr(grad), NativeTensors.Ptr(m), NativeTensors.Ptr(v),
                          instances, n, lrs, wds, beta1, beta2, eps, step), nameof(NativeMethods.mi_adamw_step_f32));
    }

    /// <summary>sums[i] += the squared L2 norm of instance i's part of x.</summary>
    public static void AddSumSquares(Tensor x, int instances, double[] sums)
    {
        long n = Require(x, instances, "gradient");
        fixed (double* s = sums)
            Ensure.Ok(NativeMethods.mi_sum_squares_f32(NativeTensors.Ptr(x), instances, n, s), nameof(NativeMethods.mi_sum_squares_f32));
    }

    /// <summary>Instance i's part of x times factor[i], in place.</summary>
    public static void ScaleRows(Tensor x, int instances, float[] factor)
    {
        long n = Require(x, instances, "gradient");
        fixed (float* f = factor)
            Ensure.Ok(NativeMethods.mi_scale_rows_f32(NativeTensors.Ptr(x), instances, n, f), nameof(NativeMethods.mi_scale_rows_f32));
    }

    /// <summary>Elements per instance of a tensor these kernels can take.</summary>
    private static long Require(Tensor t, int instances, string name)
    {
        NativeTensors.RequireFloat32Cpu(t, name);
        if (!t.is_contiguous()) throw new ArgumentException($"the {name} must be contiguous for the native optimizer");
        if (t.numel() == 0 || t.numel() % instances != 0)
            throw new ArgumentException($"the {name} has {t.numel()} elements, not a positive multiple of {instances} instances");
        return t.numel() / instances;
    }
}
