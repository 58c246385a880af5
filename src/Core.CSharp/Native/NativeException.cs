using System.Runtime.InteropServices;

namespace MechInterp.Native;

/// <summary>A native kernel returned a non-zero status; the message is the library's own.</summary>
public sealed class NativeException(int status, string function, string nativeMessage)
    : Exception($"{function} failed with status {status} ({StatusName(status)}): {nativeMessage}")
{
    /// <summary>The mi_status code.</summary>
    public int Status { get; } = status;

    /// <summary>The text of mi_last_error() at the failure.</summary>
    public string NativeMessage { get; } = nativeMessage;

    internal static string StatusName(int status) => status switch
    {
        1 => "null pointer",
        2 => "invalid size",
        3 => "size overflow",
        4 => "invalid argument",
        5 => "internal error",
        6 => "unsupported",
        _ => "unknown status",
    };
}

/// <summary>Turns a status into an exception carrying the native message (as LibGit2Sharp's Ensure.ZeroResult).</summary>
internal static class Ensure
{
    public static void Ok(int status, string function)
    {
        if (status == 0) return;
        string message = Marshal.PtrToStringUTF8(NativeMethods.mi_last_error()) ?? "";
        throw new NativeException(status, function, message);
    }
}
