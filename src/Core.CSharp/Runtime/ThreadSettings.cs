using TorchSharp;

namespace MechInterp.Runtime;

/// <summary>Pushes the thread setting to libtorch and the native library once both are loaded.</summary>
internal static class ThreadSettings
{
    /// <summary>The native library first: it is the one that can refuse, and then libtorch must not have changed.</summary>
    public static void Apply(int threads)
    {
        Native.NativeKernels.TrySetThreads(threads);
        if (TorchRuntime.IsLoaded) torch.set_num_threads(threads);
    }
}
