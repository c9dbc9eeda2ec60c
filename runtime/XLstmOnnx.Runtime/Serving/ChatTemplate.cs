namespace XLstmOnnx.Runtime.Serving;

/// <summary>
/// The plain-text transcript used for chat with base models (xLSTM checkpoints have no chat template):
/// <c>System: …\nUser: …\nAssistant: …\n</c>, ending with <c>Assistant:</c> for the reply, which stops at "\nUser:".
/// </summary>
public static class ChatTemplate
{
    /// <summary>A reply ends where the model starts the next user turn.</summary>
    public const string StopString = "\nUser:";

    public static readonly IReadOnlyList<string> Roles = ["system", "user", "assistant"];

    /// <summary>The prompt text for <paramref name="messages"/> (role, content).</summary>
    public static string Render(IEnumerable<(string Role, string Content)> messages)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var (role, content) in messages)
        {
            string name = role switch
            {
                "system" => "System",
                "user" => "User",
                "assistant" => "Assistant",
                _ => throw new XLstmOnnxException($"message role must be system, user or assistant; found \"{role}\"."),
            };
            sb.Append(name).Append(": ").Append(content).Append('\n');
        }
        return sb.Append("Assistant:").ToString();
    }
}
