using XLstmOnnx.GraphBuilder.Checkpoint;
using DataType = XLstmOnnx.GraphBuilder.Onnx.TensorProto.Types.DataType;

namespace XLstmOnnx.GraphBuilder.Graph;

/// <summary>
/// A [N, K] weight in ONNX Runtime's MatMulNBits layout (com.microsoft, bits = 4): per row n and block of
/// <see cref="BlockSize"/> inputs, asymmetric 4-bit codes q with w ≈ (q − zp)·scale, where scale = (max − min)/15 and
/// zp = round(−min/scale). B is uint8 [N, k_blocks, block/2] with the lower-index code in the low nibble; scales are
/// [N, k_blocks] in the activation type; zero points uint8 [N, ⌈k_blocks/2⌉], packed the same way. The three are
/// computed in one pass over the weight when first asked for, and dropped once each was taken.
/// </summary>
public sealed class Int4Quantizer(IWeightSource weight, int blockSize, DataType scaleType)
{
    private byte[]? _b, _scales, _zeros;
    private int _taken;

    public long N { get; } = weight.Shape[0];
    public long K { get; } = weight.Shape[1];
    public int BlockSize => blockSize;
    public long KBlocks => (K + blockSize - 1) / blockSize;
    public long[] BShape => [N, KBlocks, blockSize / 2];
    public long[] ScalesShape => [N, KBlocks];
    public long[] ZerosShape => [N, (KBlocks + 1) / 2];
    public long BBytes => N * KBlocks * (blockSize / 2);
    public long ScalesBytes => N * KBlocks * WeightBytes.Size(scaleType);
    public long ZerosBytes => N * ((KBlocks + 1) / 2);

    public byte[] B() => Take(ref _b);
    public byte[] Scales() => Take(ref _scales);
    public byte[] ZeroPoints() => Take(ref _zeros);

    private byte[] Take(ref byte[]? field)
    {
        if (field is null) Compute();
        var result = field!;
        if (++_taken == 3) _b = _scales = _zeros = null; // all three written: free the memory
        return result;
    }

    private void Compute()
    {
        if (!Export.ExportOptions.QuantizeBlockSizes.Contains(blockSize))
        {
            throw XLstmOnnxException.MustBe($"{nameof(Int4Quantizer)}({nameof(blockSize)})", $"one of {string.Join(", ", Export.ExportOptions.QuantizeBlockSizes)}", blockSize);
        }
        var b = new byte[BBytes];
        var scales = new float[N * KBlocks];
        var zeros = new byte[ZerosBytes];
        // rows are independent (each writes its own bytes of b, scales and zeros): a 7B export quantizes 6.5e9 weights
        try
        {
            Parallel.For(0, N, () => (Row: new float[K], Block: new float[blockSize]), (n, _, buf) =>
            {
                QuantizeRow(n, buf.Row, buf.Block, b, scales, zeros);
                return buf;
            }, _ => { });
        }
        catch (AggregateException e) when (e.InnerExceptions.OfType<XLstmOnnxException>().FirstOrDefault() is { } ours)
        {
            // a source refused its values (a non-finite weight): our error, not the thread pool's wrapper
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(ours);
        }
        _b = b;
        _scales = WeightBytes.Encode(scales, scaleType);
        _zeros = zeros;
    }

    private void QuantizeRow(long n, float[] row, float[] block, byte[] b, float[] scales, byte[] zeros)
    {
        weight.ReadFloat32(n * K, row);
        for (long kb = 0; kb < KBlocks; kb++)
        {
            int len = (int)Math.Min(blockSize, K - kb * blockSize);
            Array.Clear(block);
            row.AsSpan((int)(kb * blockSize), len).CopyTo(block);
            float min = 0, max = 0; // include 0 so that padding (and exact zeros) stay exact
            foreach (float v in block)
            {
                min = Math.Min(min, v);
                max = Math.Max(max, v);
            }
            float scale = (max - min) / 15f;
            if (scale == 0) scale = 1f;
            int zp = Math.Clamp((int)MathF.Round(-min / scale), 0, 15);
            scales[n * KBlocks + kb] = scale;
            long zi = n * ((KBlocks + 1) / 2) + kb / 2;
            zeros[zi] |= (byte)(kb % 2 == 0 ? zp : zp << 4);
            long bi = (n * KBlocks + kb) * (blockSize / 2);
            for (int j = 0; j < blockSize; j += 2)
            {
                int q0 = Math.Clamp((int)MathF.Round(block[j] / scale) + zp, 0, 15);
                int q1 = Math.Clamp((int)MathF.Round(block[j + 1] / scale) + zp, 0, 15);
                b[bi + j / 2] = (byte)(q0 | (q1 << 4));
            }
        }
    }
}
