// Closing what the frontend opens over the graph: dialogs (missing models, templates), toasts, the error overlay.

export async function closeUi(page) {
  for (let i = 0; i < 5; i++) {
    const open = await page.evaluate(
      () => document.querySelectorAll('.p-dialog, .p-toast-message, [data-testid="error-overlay"]').length
    )
    if (!open) return
    await page.evaluate(() => {
      for (const b of document.querySelectorAll(
        '.p-dialog .p-dialog-close-button, .p-dialog-header-close, .p-toast-close-button, .p-toast-icon-close, ' +
          '[data-testid="error-overlay-dismiss"]'
      ))
        b.click()
    })
    await page.keyboard.press('Escape')
    await page.waitForTimeout(100)
  }
}
