namespace XLstmOnnx.Contract.Safetensors;

/// <summary>Element types a safetensors header may name.</summary>
public enum SafetensorsDtype
{
    F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL,
}

/// <summary>Names and sizes of <see cref="SafetensorsDtype"/>.</summary>
public static class SafetensorsDtypes
{
    public static int Size(this SafetensorsDtype d) => d switch
    {
        SafetensorsDtype.F64 or SafetensorsDtype.I64 => 8,
        SafetensorsDtype.F32 or SafetensorsDtype.I32 => 4,
        SafetensorsDtype.F16 or SafetensorsDtype.BF16 or SafetensorsDtype.I16 => 2,
        _ => 1,
    };

    public static bool TryParse(string s, out SafetensorsDtype d) =>
        Enum.TryParse(s, ignoreCase: false, out d) && Enum.IsDefined(d);

    /// <summary>True for the floating types a weight may be stored in.</summary>
    public static bool IsWeightType(this SafetensorsDtype d) =>
        d is SafetensorsDtype.F32 or SafetensorsDtype.F16 or SafetensorsDtype.BF16;
}
