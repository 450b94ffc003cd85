; Inno Setup script for the Windows onedir bundle (build\dist\cxr-viewer from packaging\cxr_viewer.spec).
; Not built or run on this project's Linux machines; kept so a Windows build needs no new decisions.
#define AppVersion "0.1.0"
[Setup]
AppId={{7B1E2C8A-4C55-4E0B-9E51-5C2D6F0A1C11}
AppName=cxr_viewer
AppVersion={#AppVersion}
AppPublisher=cxr_viewer developers
DefaultDirName={autopf}\cxr_viewer
DefaultGroupName=cxr_viewer
OutputBaseFilename=cxr-viewer-{#AppVersion}-windows-x64-setup
SetupIconFile=..\..\resources\icons\cxr_viewer.ico
Compression=lzma2
SolidCompression=yes
ArchitecturesInstallIn64BitMode=x64compatible
[Files]
Source: "..\..\build\dist\cxr-viewer\*"; DestDir: "{app}"; Flags: recursesubdirs ignoreversion
[Icons]
Name: "{group}\cxr_viewer (research use only)"; Filename: "{app}\cxr-viewer.exe"
[Run]
Filename: "{app}\cxr-viewer.exe"; Parameters: "--self-test"; Flags: runhidden waituntilterminated; StatusMsg: "Checking the installation..."
