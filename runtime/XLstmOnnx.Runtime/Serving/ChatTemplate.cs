namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// The plain-text transcript used for chat with base models (xLSTM checkpoints have no chat template):
/// <c>System: …\nUser: …\nAssistant: …\n</c>, ending with <c>Assistant:</c> for the reply, which stops at "\nUser:".
/// OpenAI's <c>developer</c> role is a system message.
/// </summary>
public static class ChatTemplate
{
    /// <summary>A reply ends where the model starts the next user turn.</summary>
    public const string StopString = "\nUser:";

    /// <summary>The roles a message may have.</summary>
    public static readonly IReadOnlyList<string> Roles = ["system", "developer", "user", "assistant"];

    /// <summary>The prompt text for <paramref name="messages"/> (role, content).</summary>
    public static string Render(IEnumerable<(string Role, string Content)> messages)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var (role, content) in messages)
        {
            string name = role switch
            {
                "system" or "developer" => "System",
                "user" => "User",
                "assistant" => "Assistant",
                _ => throw new XLstmOnnxException($"message role must be {string.Join(", ", Roles)}; found \"{role}\"."),
            };
            sb.Append(name).Append(": ").Append(content).Append('\n');
        }
        return sb.Append("Assistant:").ToString();
    }
}

/// <summary>
/// The text of one chat reply as it streams: the transcript ends with "Assistant:" and the model goes on with " text",
/// so exactly one leading space of the reply is dropped (from its first non-empty piece). The server, streamed or not,
/// and <see cref="XLstmChatClient"/> all send what this returns, so every path gives the same text.
/// </summary>
public sealed class ChatReply
{
    private bool _started;

    /// <summary>The piece to send for the next piece of model text.</summary>
    public string Next(string piece)
    {
        if (_started || piece.Length == 0) return piece;
        _started = true;
        return piece[0] == ' ' ? piece[1..] : piece;
    }
}
