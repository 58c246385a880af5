using System.Runtime.CompilerServices;
using MechInterp.Runtime;

namespace MechInterp.Tests;

internal static class TestSetup
{
    /// <summary>libtorch must be loadable before any test touches TorchSharp.</summary>
    [ModuleInitializer]
    internal static void LoadTorch() => TorchRuntime.EnsureLoaded();
}
