using System.Runtime.InteropServices;

namespace MechInterp.Native;

/// <summary>The P/Invoke declarations of native/include/mechinterp.h: the only place with P/Invoke.</summary>
internal static unsafe partial class NativeMethods
{
    public const string Library = "mechinterp_native";

    /// <summary>The ABI version this assembly was written against (MI_ABI_VERSION).</summary>
    public const int AbiVersion = 1;

    [LibraryImport(Library)] public static partial int mi_version();
    [LibraryImport(Library)] public static partial IntPtr mi_last_error();
    [LibraryImport(Library)] public static partial int mi_set_num_threads(int n);
    [LibraryImport(Library)] public static partial int mi_get_num_threads();
    [LibraryImport(Library)] public static partial int mi_cpu_has_avx2();
    [LibraryImport(Library)] public static partial int mi_has_cuda();

    /// <summary>The data pointer of a TorchSharp tensor (at its storage offset): TorchSharp exposes no public one.</summary>
    [LibraryImport("LibTorchSharp")] public static partial IntPtr THSTensor_data(IntPtr tensor);

    [LibraryImport(Library)] public static partial int mi_softmax_rows_f32(float* x, float* y, long rows, long cols);
    [LibraryImport(Library)] public static partial int mi_softmax_rows_backward_f32(float* y, float* dy, float* dx, long rows, long cols);
}
