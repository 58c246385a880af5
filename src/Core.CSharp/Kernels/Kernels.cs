using MechInterp.Native;
using MechInterp.Runtime;
using static TorchSharp.torch;

namespace MechInterp.Kernels;

/// <summary>
/// The kernels with a native and a managed implementation. Each call picks one from
/// <see cref="Settings.Kernels"/> unless a backend is passed; tests hold the two equal.
/// </summary>
public static class Kernel
{
    /// <summary>Softmax over the last dimension; differentiable on both backends.</summary>
    public static Tensor SoftmaxLastDim(Tensor x, KernelBackend? backend = null)
    {
        TorchRuntime.EnsureLoaded();
        return NativeKernels.ShouldUseNative(backend ?? Settings.Kernels)
            ? SoftmaxFunction.apply(x)
            : x.softmax(-1);
    }
}
