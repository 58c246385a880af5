using TorchSharp;

namespace MechInterp.Runtime;

/// <summary>Pushes the thread setting to libtorch and the native library once both are loaded.</summary>
internal static class ThreadSettings
{
    public static void Apply(int threads)
    {
        if (TorchRuntime.IsLoaded) torch.set_num_threads(threads);
        Native.NativeKernels.TrySetThreads(threads);
    }
}
